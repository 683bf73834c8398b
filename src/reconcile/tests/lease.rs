//! The lease on the fakes: a run whose lease is taken over, or cannot be renewed, stops at once
//! (before its next step, within a renewal period); the leases a run holds are renewed while it
//! waits for further ones.

use super::*;

/// One pass under a lease of `ttl`.
async fn pass_leased(world: &Arc<World>, ttl: Duration) -> Result<Report, ReconcileError> {
    let scope = Scope::default();
    let work = once(world.clone(), &scope, options());
    leased(world, Duration::ZERO, ttl, work).await
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_lease_is_taken_in_a_pause_stops_within_a_renewal_period() {
    let (fleet, world) = serving_one(CANARY);
    let ttl = Duration::from_secs(8);
    // Taken over 3 s into the run: in the first canary pause (10 s).
    let thief = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            fleet.steal_leases();
            tokio::time::Instant::now()
        })
    };
    let err = pass_leased(&world, ttl).await.unwrap_err();
    let stolen = thief.await.unwrap();
    let took = stolen.elapsed();
    assert!(matches!(&err, ReconcileError::LeaseLost { .. }), "{err:?}");
    assert!(err.to_string().contains("now held by run thief"), "{err}");
    // At the next renewal (every 2 s), and the pause ends within its half-second poll.
    assert!(took <= ttl / 4 + Duration::from_secs(1), "{took:?}");
    // Its next step (the 50% weight) never came, and nothing was cleaned up.
    let log = fleet.log();
    assert!(!log.iter().any(|l| l.ends_with("green 50")), "{log:?}");
    assert!(!log.iter().any(|l| l.starts_with("stop")), "{log:?}");
    assert_eq!(fleet.server(&at("web-1", "green")).weight, 20);
}

#[tokio::test(start_paused = true)]
async fn a_run_that_cannot_renew_its_lease_stops_after_half_of_it() {
    let (fleet, world) = serving_one(CANARY);
    let ttl = Duration::from_secs(8);
    let cut = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            fleet.set_down("lb-1", true);
            tokio::time::Instant::now()
        })
    };
    let err = pass_leased(&world, ttl).await.unwrap_err();
    let took = cut.await.unwrap().elapsed();
    assert!(
        err.to_string().contains("lease on lb-1: not renewed for "),
        "{err}"
    );
    // Renewals fail from the cut (the last one that worked was at most 2 s before it); half the
    // ttl after that one the run stops, and its pause (which keeps trying to read the record)
    // is dropped a renewal period later: before the lease could expire (9 s after the last
    // renewal), and before the pause's own reads of the record would have given up (10 s).
    assert!(took < ttl * 3 / 4, "{took:?}");
    let log = fleet.log();
    assert!(!log.iter().any(|l| l.ends_with("green 50")), "{log:?}");
}

/// `prod` behind `edge` on lb-1 and `stage` behind `edge2` on lb-2: two leases to take.
fn two_balancers() -> (Arc<Fleet>, Arc<World>) {
    let yaml = crate::testing::two_hosts_yaml("blue-green")
        .replace(
            "  lb-1: { address: 192.0.2.10 }\n",
            "  lb-1: { address: 192.0.2.10 }\n  lb-2: { address: 192.0.2.9 }\n",
        )
        .replace(
            "  edge: { kind: haproxy, host: lb-1 }\n",
            "  edge: { kind: haproxy, host: lb-1 }\n  edge2: { kind: haproxy, host: lb-2 }\n",
        )
        + "  stage:\n    balancer: edge2\n    hosts: [web-1]\n    apps:\n      api: { version: \"2.0\", listen: \"0.0.0.0:80\", strategy: blue-green, slots: { blue: 8002, green: 8003 } }\n";
    let desired = crate::testing::desired(&yaml);
    let fleet = Fleet::new(&desired);
    let world = Arc::new(World::new(desired, "r".into(), fleet.drivers()));
    (fleet, world)
}

#[tokio::test(start_paused = true)]
async fn the_leases_taken_are_renewed_while_the_next_one_is_waited_for() {
    let (fleet, world) = two_balancers();
    // Another run holds lb-2's for 20 s: lb-1's (8 s + 1) is taken first, then kept.
    fleet.hold_lease("lb-2", "other", 20);
    let ttl = Duration::from_secs(8);
    world
        .acquire_lease(Duration::from_secs(60), ttl)
        .await
        .unwrap();
    let (lb1, now) = fleet.lease_on("lb-1");
    let (epoch, expires, run) = lb1.unwrap();
    assert!(now >= 20, "taken before the other run's expired, at {now}");
    assert_eq!((epoch, &run), (1, &world.run_id));
    assert!(
        expires > now,
        "lb-1's lease expired at {expires}, now {now}"
    );
    // Still the lease the run took, at the epoch it took it: fencing passes.
    world.check_lease().await.unwrap();
    assert_eq!(fleet.lease_on("lb-2").0.unwrap().2, world.run_id);
    world.release_lease().await;
}

/// Two runs that ask for the lease on every host at the same moment: each may take some hosts
/// first, but they give those back and take them in order, so exactly one ends up holding them
/// all and the other is told who holds them, holding none.
#[tokio::test(start_paused = true)]
async fn two_runs_taking_the_lease_at_once_end_with_one_holding_it_everywhere() {
    let (fleet, world) = two_balancers();
    let other = Arc::new(World::new(
        world.desired.clone(),
        "r".into(),
        fleet.drivers(),
    ));
    assert_ne!(world.run_id, other.run_id);
    let ttl = Duration::from_secs(8);
    let (a, b) = tokio::join!(
        world.acquire_lease(Duration::ZERO, ttl),
        other.acquire_lease(Duration::ZERO, ttl)
    );
    let (winner, loser) = match (a, b) {
        (Ok(()), Err(e)) => (&world, e),
        (Err(e), Ok(())) => (&other, e),
        (a, b) => panic!("not exactly one run took the lease: {a:?} {b:?}"),
    };
    assert!(matches!(loser, ReconcileError::Locked { .. }), "{loser:?}");
    for host in ["lb-1", "lb-2"] {
        assert_eq!(fleet.lease_on(host).0.unwrap().2, winner.run_id, "{host}");
    }
    winner.check_lease().await.unwrap();
    winner.release_lease().await;
    assert_eq!(fleet.lease_on("lb-1").0, None);
}
