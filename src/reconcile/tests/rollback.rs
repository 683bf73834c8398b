//! Rollbacks that hold: the bake after traffic moved (an exit, a DOWN server or an error rate takes
//! it back; a killed run resumes it), the last good version brought back when it is dead, a
//! rolling update reverted (or held), no crash loop, and messages read back from the fleet.

use super::*;

/// A pass that failed by the version's fault, and its message.
async fn failed_pass(world: &Arc<World>) -> String {
    let err = pass(world).await.unwrap_err();
    blames_the_version(&err);
    crate::error::chain(&err)
}

/// Runs `then` on the fleet once `entry` is in its log (a spawned task, polling every 10 ms).
fn once_logged(
    fleet: &Arc<Fleet>,
    entry: &'static str,
    then: impl FnOnce(&Fleet) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let fleet = fleet.clone();
    tokio::spawn(async move {
        while fleet.when(entry).is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        then(&fleet);
    })
}

/// Kills 1.0 (the stable version, in blue) on both hosts.
fn kill_stable(fleet: &Fleet) {
    for host in ["web-1", "web-2"] {
        fleet.kill(&at(host, "blue"));
    }
}

/// The plan a run would make now.
async fn plan_now(world: &Arc<World>) -> crate::plan::Plan {
    let observed = world.observe().await.unwrap();
    crate::plan::build(
        &world.desired,
        &observed,
        &Default::default(),
        &Scope::default(),
    )
}

/// Whether the version was stopped anywhere.
fn stopped(fleet: &Fleet, version: &str) -> bool {
    fleet
        .log()
        .iter()
        .any(|l| l.starts_with(&format!("stop {version} ")))
}

#[tokio::test(start_paused = true)]
async fn a_version_that_dies_in_its_bake_gives_the_traffic_back_at_once() {
    let (fleet, world) = rolling_out("blue-green", Behaviour::dying(Duration::from_secs(3)));
    let text = failed_pass(&world).await;
    assert!(text.contains("into its bake"), "{text}");
    assert!(
        text.contains("rolled back, read back: prod/api traffic goes to 1.0 on web-1_blue (weight 100, UP), web-2_blue (weight 100, UP); no instance of 2.0 runs"),
        "{text}"
    );
    // 1.0 stayed running through the bake and took the traffic back: it was never stopped, and
    // got its weight back within a watch of the death.
    assert!(!stopped(&fleet, "1.0"), "{:?}", fleet.log());
    assert_eq!(weights(&fleet), served_by("1.0"));
    let shift = fleet.when("weight kf_prod_api/web-1_green 100").unwrap();
    let back = fleet.when("weight kf_prod_api/web-1_blue 100").unwrap();
    let died = shift + Duration::from_secs(3);
    assert!(
        back >= died - Duration::from_secs(1) && back <= died + Duration::from_millis(500),
        "taken back at {back:?}, shifted at {shift:?}"
    );
    let record = fleet.rollout("prod", "api").unwrap();
    assert_eq!(record.phase, Phase::Failed);
    assert_eq!(record.last_good.as_deref(), Some("1.0"));
    assert_eq!(fleet.violations(), Vec::<String>::new());
    // Quarantined: the next pass starts nothing (no crash loop).
    let before = fleet.log().len();
    let err = pass(&world).await.unwrap_err();
    assert!(matches!(err, ReconcileError::Quarantined(_)), "{err}");
    assert_eq!(fleet.log().len(), before);
}

#[tokio::test(start_paused = true)]
async fn a_bake_that_passes_retires_the_old_version_after_it_and_records_the_last_good() {
    let (fleet, world) = serving_one("blue-green");
    pass(&world).await.unwrap();
    assert_eq!(weights(&fleet), served_by("2.0"));
    let shift = fleet.when("weight kf_prod_api/web-1_green 100").unwrap();
    for host in ["web-1", "web-2"] {
        let drain = fleet
            .when(&format!("state kf_prod_api/{host}_blue Drain"))
            .unwrap();
        assert!(
            drain >= shift + Duration::from_secs(5),
            "{host} drained {:?} after the shift, within the bake of 5s",
            drain - shift
        );
    }
    let record = fleet.rollout("prod", "api").unwrap();
    assert_eq!(record.phase, Phase::Succeeded);
    assert_eq!(record.last_good.as_deref(), Some("1.0"));
    assert!(record.bake.as_ref().unwrap().passed, "{record:?}");
    // The next rollout starts from 2.0 as the last good version.
    let desired = crate::testing::desired(
        &crate::testing::two_hosts_yaml("blue-green").replace("\"2.0\"", "\"3.0\""),
    );
    let world = Arc::new(World::new(desired, "r2".into(), fleet.drivers()));
    fleet.behave("3.0", Behaviour::never_ready());
    pass(&world).await.unwrap_err();
    let record = fleet.rollout("prod", "api").unwrap();
    assert_eq!(
        (record.version.as_str(), record.last_good.as_deref()),
        ("3.0", Some("2.0"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_version_that_errs_in_its_bake_is_taken_back() {
    let strategy = "{ blue_green: { analysis: { max_error_rate: 0.05, min_requests: 100 } } }";
    let (fleet, world) = rolling_out(strategy, Behaviour::erring(0.3));
    let text = failed_pass(&world).await;
    assert!(
        text.contains("bake: error rate 0.300") || text.contains("error rate 0.3"),
        "{text}"
    );
    assert!(text.contains("is above 0.05"), "{text}");
    assert_eq!(weights(&fleet), served_by("1.0"));
    assert!(!stopped(&fleet, "1.0"));
    assert_eq!(fleet.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_run_killed_in_its_bake_resumes_it_where_it_was() {
    let (fleet, world) = serving_one("blue-green");
    let stopper = {
        let (fleet, world) = (fleet.clone(), world.clone());
        tokio::spawn(async move {
            while fleet.when("weight kf_prod_api/web-1_green 100").is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            world.interrupt();
        })
    };
    let err = pass(&world).await.unwrap_err();
    stopper.await.unwrap();
    assert_eq!(err.next(), Next::Stop, "{err}");
    let shift = fleet.when("weight kf_prod_api/web-1_green 100").unwrap();
    let record = fleet.rollout("prod", "api").unwrap();
    let bake = record.bake.clone().unwrap();
    assert!(!bake.passed);
    assert!(
        !stopped(&fleet, "1.0"),
        "the old version waits out the bake"
    );
    // The next run, 1 s later, plans the bake again and waits only what is left of it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let world = Arc::new(World::new(
        world.desired.clone(),
        "r".into(),
        fleet.drivers(),
    ));
    let plan = plan_now(&world).await;
    assert!(
        plan.render_text()
            .starts_with("6 steps:\n   1. bake prod/api 2.0 for 5s"),
        "{}",
        plan.render_text()
    );
    pass(&world).await.unwrap();
    let drain = fleet.when("state kf_prod_api/web-1_blue Drain").unwrap();
    assert!(
        drain >= shift + Duration::from_secs(5) && drain < shift + Duration::from_secs(7),
        "drained {:?} after the shift",
        drain - shift
    );
    assert_eq!(
        fleet
            .rollout("prod", "api")
            .unwrap()
            .bake
            .unwrap()
            .started_at,
        bake.started_at
    );
    assert_eq!(weights(&fleet), served_by("2.0"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_canary_whose_stable_died_brings_the_last_good_version_back() {
    let (fleet, world) = rolling_out(CANARY, Behaviour::erring(0.5));
    let killer = once_logged(&fleet, "weight kf_prod_api/web-1_green 20", kill_stable);
    let text = failed_pass(&world).await;
    killer.await.unwrap();
    assert!(text.contains("analysis failed at step 0"), "{text}");
    assert!(
        text.contains("rolled back, read back: prod/api traffic goes to 1.0 on web-1_blue (weight 100, UP), web-2_blue (weight 100, UP); no instance of 2.0 runs"),
        "{text}"
    );
    assert_eq!(weights(&fleet), served_by("1.0"));
    // 1.0 was started again, probed and enabled before the canary gave its traffic up.
    let log = fleet.log();
    // The last time (enabling the canary set its weight to 0 first).
    let pos = |s: &str| {
        log.iter()
            .rposition(|l| l == s)
            .unwrap_or_else(|| panic!("{s} in {log:?}"))
    };
    for host in ["web-1", "web-2"] {
        assert!(
            pos(&format!("start 1.0 {host} in blue"))
                < pos(&format!("weight kf_prod_api/{host}_green 0")),
            "{log:#?}"
        );
    }
    assert_eq!(fleet.violations(), Vec::<String>::new());
    // In sync with the quarantine: nothing more to do.
    let err = pass(&world).await.unwrap_err();
    assert!(matches!(err, ReconcileError::Quarantined(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_last_good_version_that_cannot_come_back_leaves_the_failed_one_serving_and_says_so() {
    let (fleet, world) = rolling_out(CANARY, Behaviour::erring(0.5));
    let killer = once_logged(&fleet, "weight kf_prod_api/web-1_green 20", |fleet| {
        fleet.behave("1.0", Behaviour::exiting());
        kill_stable(fleet);
    });
    let text = failed_pass(&world).await;
    killer.await.unwrap();
    assert!(
        text.contains("the cleanup (bringing back 1.0) failed"),
        "{text}"
    );
    assert!(
        text.contains("NOT rolled back: 2.0 keeps traffic (prod/api traffic goes to 2.0 on web-1_green (weight 20, UP), web-2_green (weight 20, UP)); 2.0 still runs on web-1, web-2"),
        "{text}"
    );
    // The failed version is the only one that serves, so it keeps serving.
    for host in ["web-1", "web-2"] {
        assert!(fleet.server(&at(host, "green")).serving());
    }
    assert_eq!(fleet.violations(), Vec::<String>::new());
    // The next plan does not call this in sync: it tries to bring 1.0 back again.
    let plan = plan_now(&world).await;
    assert!(
        plan.render_text()
            .contains("start prod/api 1.0 in slot blue on web-1"),
        "{}",
        plan.render_text()
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_rolling_update_reverts_the_hosts_it_finished() {
    let (fleet, world) = serving_one("{ rolling: { batch: 1 } }");
    fleet.behave_on("web-2", "2.0", Behaviour::never_ready());
    let text = failed_pass(&world).await;
    assert!(
        text.contains("probe prod/api slot green on web-2"),
        "{text}"
    );
    assert!(
        text.contains("rolled back, read back: prod/api traffic goes to 1.0 on web-1_blue (weight 100, UP), web-2_blue (weight 100, UP); no instance of 2.0 runs"),
        "{text}"
    );
    assert_eq!(weights(&fleet), served_by("1.0"));
    // web-1 had finished (its 1.0 retired after the bake): 1.0 was started there again.
    let log = fleet.log();
    assert!(log.iter().any(|l| l == "stop 1.0 web-1 in blue"), "{log:?}");
    assert!(
        log.iter().any(|l| l == "start 1.0 web-1 in blue"),
        "{log:?}"
    );
    assert_eq!(fleet.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_rolling_update_that_holds_keeps_what_it_finished_and_says_so() {
    let (fleet, world) = serving_one("{ rolling: { batch: 1, on_failure: hold } }");
    fleet.behave_on("web-2", "2.0", Behaviour::never_ready());
    let text = failed_pass(&world).await;
    assert!(
        text.contains("NOT rolled back: 2.0 keeps traffic (on_failure: hold keeps what the rollout finished; prod/api traffic goes to 1.0 on web-2_blue (weight 100, UP); 2.0 on web-1_green (weight 100, UP))"),
        "{text}"
    );
    assert_eq!(fleet.server(&at("web-1", "green")).weight, 100);
    // The next pass and plan say it plainly: traffic on a quarantined version, nothing planned.
    let err = pass(&world).await.unwrap_err();
    let said = err.to_string();
    assert!(
        said.contains("prod/api 2.0 keeps its traffic on [web-1_green]: its strategy holds what a failed rollout finished (on_failure: hold)"),
        "{said}"
    );
    let plan = plan_now(&world).await;
    assert!(
        plan.is_empty() && !plan.stuck.is_empty(),
        "{}",
        plan.render_text()
    );
    assert!(plan.render_text().contains("not in sync"));
}

#[tokio::test(start_paused = true)]
async fn a_stable_killed_before_the_shift_and_a_new_version_that_dies_bring_the_stable_back() {
    let (fleet, world) = rolling_out("blue-green", Behaviour::dying(Duration::from_secs(3)));
    let killer = once_logged(&fleet, "start 2.0 web-2 in green", kill_stable);
    let text = failed_pass(&world).await;
    killer.await.unwrap();
    assert!(text.contains("into its bake"), "{text}");
    assert!(text.contains("rolled back, read back"), "{text}");
    assert_eq!(weights(&fleet), served_by("1.0"));
    assert!(fleet.log().iter().any(|l| l == "start 1.0 web-1 in blue"));
    assert_eq!(fleet.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_version_that_dies_again_after_its_restart_is_quarantined_not_restarted_forever() {
    let (fleet, world) = serving_one("blue-green");
    pass(&world).await.unwrap();
    assert_eq!(weights(&fleet), served_by("2.0"));
    // 2.0 dies on web-1 long after its rollout; from now on it dies 2 s after any start.
    fleet.kill(&at("web-1", "green"));
    fleet.behave("2.0", Behaviour::dying(Duration::from_secs(2)));
    let text = failed_pass(&world).await;
    assert!(text.contains("into its bake"), "{text}");
    assert!(
        text.contains("rolled back, read back: prod/api traffic goes to 1.0"),
        "{text}"
    );
    let starts = fleet
        .log()
        .iter()
        .filter(|l| l.starts_with("start 2.0 web-1"))
        .count();
    assert_eq!(starts, 2, "started once, restarted once: {:?}", fleet.log());
    assert_eq!(weights(&fleet), served_by("1.0"));
    let err = pass(&world).await.unwrap_err();
    assert!(matches!(err, ReconcileError::Quarantined(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_bake_records_the_failure_itself_before_anything_else() {
    // The plan's steps alone, without the pass around them: as if the run were killed right after
    // the bake failed.
    let (fleet, world) = rolling_out("blue-green", Behaviour::dying(Duration::from_secs(3)));
    world
        .acquire_lease(Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap();
    let observed = world.observe().await.unwrap();
    let plan = plan_now(&world).await;
    let effects = Live::new(&world, observed, None, false);
    let failed = crate::execute::run(&plan, effects, 8, &crate::execute::Unwatched)
        .await
        .unwrap_err();
    assert!(matches!(failed.action, Action::Bake { .. }), "{failed}");
    let record = fleet.rollout("prod", "api").unwrap();
    assert_eq!(record.phase, Phase::Failed, "{record:?}");
    assert!(record
        .outcome
        .unwrap()
        .starts_with("bake failed: 2.0 on web-"));
    // The traffic is back on 1.0, and the next plan does not move it to 2.0 again.
    for host in ["web-1", "web-2"] {
        assert_eq!(fleet.server(&at(host, "blue")).weight, 100);
    }
    let text = plan_now(&world).await.render_text();
    assert!(
        !text.contains("shift prod/api traffic on edge to [web-1_green"),
        "{text}"
    );
    assert!(
        text.contains("stop prod/api 2.0 in slot green on web-1"),
        "{text}"
    );
}
