//! Whole passes: blue-green, the failures of a version and whose fault they are, lost hosts and
//! leases, a first deploy, what Git no longer names.

use super::*;

#[tokio::test(start_paused = true)]
async fn blue_green_switches_without_breaking_a_rule() {
    let (fleet, world) = serving_one("blue-green");
    let report = pass(&world).await.unwrap();
    // Start, probe, enable on each host, shift, bake, drain and stop on each host, conclude.
    assert_eq!(report.steps, 13);
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
        text.contains("rolled back, read back: prod/api traffic goes to 1.0 on web-1_blue (weight 100, UP), web-2_blue (weight 100, UP); no instance of 2.0 runs"),
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

/// Observation reaches every host at most `--parallel` at a time, and not one after another.
#[tokio::test(start_paused = true)]
async fn hosts_are_observed_at_most_parallel_at_a_time() {
    let mut yaml = crate::testing::two_hosts_yaml("blue-green").replace(
        "hosts: [web-1, web-2]",
        "hosts: [web-1, web-2, web-3, web-4, web-5, web-6, web-7]",
    );
    for n in 3..=7 {
        yaml = yaml.replace(
            "  lb-1:",
            &format!("  web-{n}: {{ address: 192.0.2.{} }}\n  lb-1:", 20 + n),
        );
    }
    let desired = crate::testing::desired(&yaml);
    let fleet = Fleet::new(&desired);
    fleet.slow_observation(Duration::from_millis(100));
    for parallel in [1, 3, 8] {
        let mut world = World::new(desired.clone(), "r".into(), fleet.drivers());
        world.parallel = parallel;
        fleet.reset_most_observed();
        let world = Arc::new(world);
        let started = tokio::time::Instant::now();
        let observed = world.observe().await.unwrap();
        let took = started.elapsed();
        assert_eq!(observed.hosts.len(), 7);
        // 7 hosts, `parallel` at a time: as many rounds of 100 ms as that takes.
        let rounds = 7usize.div_ceil(parallel) as u32;
        assert_eq!(
            took.as_millis() / 100,
            u128::from(rounds),
            "{parallel}: {took:?}"
        );
        assert_eq!(fleet.most_observed_at_once(), parallel.min(7));
    }
}

/// A host's live instances are probed all at once when it is observed, not one after another.
#[tokio::test(start_paused = true)]
async fn a_hosts_instances_are_probed_at_once() {
    let (fleet, world) = serving_one("blue-green");
    fleet.place(&at("web-1", "green"), "2.0", 0, Admin::Maint);
    fleet.slow_probes(Duration::from_millis(100));
    let mut world = World::new(world.desired.clone(), "r".into(), fleet.drivers());
    // One host at a time: only the probes of a host can overlap.
    world.parallel = 1;
    let started = tokio::time::Instant::now();
    let observed = Arc::new(world).observe().await.unwrap();
    let took = started.elapsed();
    let ready =
        |host: &str, slot: &str| observed.instance(host, "prod", "api", slot).unwrap().ready;
    assert_eq!(ready("web-1", "blue"), Some(true));
    assert_eq!(ready("web-1", "green"), Some(true));
    assert_eq!(ready("web-2", "blue"), Some(true));
    assert_eq!(fleet.most_probed_at_once(), 2);
    // web-1's two probes together, then web-2's one.
    assert_eq!(took.as_millis() / 100, 2, "{took:?}");
}
