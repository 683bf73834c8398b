//! Suspensions on the fake fleet: written to every balancer host under the lease, merged when read,
//! ended by time or by `resume`, a torn file refused; and a pass that leaves a suspended
//! environment untouched (nothing at all when the scope is suspended, the others only when some
//! environments are).

use super::*;
use crate::reconcile::suspend::{self, Decision};

/// `prod` (web-1, web-2 behind `edge` on lb-1) serves 1.0 and wants 2.0; `staging` (web-3 behind
/// `inner` on lb-2) runs nothing and wants 2.0.
pub(super) fn two_envs() -> (Arc<Fleet>, Arc<World>) {
    let yaml = crate::testing::two_hosts_yaml("blue-green")
        .replace(
            "  lb-1:",
            "  web-3: { address: 192.0.2.13 }\n  lb-2: { address: 192.0.2.20 }\n  lb-1:",
        )
        .replace(
            "  edge: { kind: haproxy, host: lb-1 }",
            "  edge: { kind: haproxy, host: lb-1 }\n  inner: { kind: haproxy, host: lb-2 }",
        )
        + r#"  staging:
    balancer: inner
    hosts: [web-3]
    apps:
      api: { version: "2.0", listen: "0.0.0.0:8080", strategy: blue-green }
"#;
    let desired = crate::testing::desired(&yaml);
    let fleet = Fleet::new(&desired);
    for host in ["web-1", "web-2"] {
        fleet.place(&at(host, "blue"), "1.0", 100, Admin::Ready);
    }
    let world = Arc::new(World::new(desired, "r".into(), fleet.drivers()));
    (fleet, world)
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn a_suspension_is_on_every_balancer_host_and_ends_by_itself() {
    let (fleet, world) = two_envs();
    let s = suspend(&world, Some("prod"), 2 * HOUR, " db migration ")
        .await
        .unwrap();
    assert_eq!(s.env.as_deref(), Some("prod"));
    assert_eq!(s.reason, "db migration");
    assert_eq!(s.until, s.at + 7200);
    assert!(s.by.contains('@'), "{}", s.by);
    for host in ["lb-1", "lb-2"] {
        let file = fleet.suspensions(host).unwrap();
        assert!(file.contains("\"db migration\""), "{host}: {file}");
    }
    // Not held after: the lease was given back.
    assert!(world.leases.lock().unwrap().is_empty());
    assert_eq!(suspensions(&world).await.unwrap(), vec![s.clone()]);
    // One second before the end it applies; at the end it is gone.
    tokio::time::advance(2 * HOUR - Duration::from_secs(1)).await;
    assert_eq!(suspensions(&world).await.unwrap(), vec![s]);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(suspensions(&world).await.unwrap(), vec![]);
}

#[tokio::test(start_paused = true)]
async fn suspending_again_replaces_and_resume_removes() {
    let (fleet, world) = two_envs();
    suspend(&world, Some("prod"), HOUR, "first").await.unwrap();
    let second = suspend(&world, Some("prod"), 3 * HOUR, "second")
        .await
        .unwrap();
    let global = suspend(&world, None, HOUR, "freeze").await.unwrap();
    let list = suspensions(&world).await.unwrap();
    assert_eq!(list, vec![global.clone(), second.clone()]);
    // The one that ends last applies; a global one applies to every environment.
    assert_eq!(applies(&list, "prod"), Some(&second));
    assert_eq!(applies(&list, "staging"), Some(&global));

    // Resuming prod leaves the global suspension, and says it still applies.
    let resumed = resume(&world, Some("prod")).await.unwrap();
    assert_eq!(resumed.removed, vec![second]);
    assert_eq!(resumed.still, Some(global.clone()));
    assert_eq!(suspensions(&world).await.unwrap(), vec![global.clone()]);
    // Nothing of prod's left to resume.
    let again = resume(&world, Some("prod")).await.unwrap();
    assert!(again.removed.is_empty());
    assert_eq!(again.still, Some(global.clone()));
    // Without --env every suspension ends, on every balancer host.
    let all = resume(&world, None).await.unwrap();
    assert_eq!(all.removed, vec![global]);
    assert_eq!(all.still, None);
    for host in ["lb-1", "lb-2"] {
        assert_eq!(fleet.suspensions(host).unwrap().trim(), "[]", "{host}");
    }
    assert_eq!(suspensions(&world).await.unwrap(), vec![]);
}

#[tokio::test(start_paused = true)]
async fn copies_are_merged_and_a_torn_one_is_an_error_naming_its_host() {
    let (fleet, world) = two_envs();
    // A suspension only one host has (the write to the other failed) still applies.
    let s = suspend(&world, Some("staging"), HOUR, "load test")
        .await
        .unwrap();
    fleet.set_suspensions("lb-1", b"[]");
    assert_eq!(suspensions(&world).await.unwrap(), vec![s]);
    // A torn file is not read as "nothing suspended".
    fleet.set_suspensions("lb-2", b"[{\"env\": \"stag");
    let err = suspensions(&world).await.unwrap_err();
    let text = crate::error::chain(&err);
    assert!(
        text.starts_with("suspensions file suspensions.json on lb-2 cannot be read"),
        "{text}"
    );
    // Nor can a pass go on as if nothing were suspended.
    assert!(suspend::check(&world, &Scope::default()).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_suspension_is_refused_without_a_length_or_a_reason() {
    let (fleet, world) = two_envs();
    for (length, reason) in [
        (Duration::ZERO, "x"),
        (suspend::LONGEST + Duration::from_secs(1), "x"),
        (HOUR, "  "),
    ] {
        assert!(suspend(&world, None, length, reason).await.is_err());
    }
    assert!(suspend(&world, None, suspend::LONGEST, "x").await.is_ok());
    assert!(fleet.suspensions("lb-1").is_some());
}

#[tokio::test(start_paused = true)]
async fn a_suspended_environment_is_not_touched_by_a_pass() {
    let (fleet, world) = two_envs();
    let s = suspend(&world, Some("prod"), HOUR, "db migration")
        .await
        .unwrap();
    let before = weights(&fleet);

    // Scoped to prod: nothing runs.
    let prod = Scope {
        env: Some("prod".into()),
        ..Scope::default()
    };
    assert_eq!(
        suspend::check(&world, &prod).await.unwrap(),
        Decision::Suspended(vec![s.clone()])
    );

    // Everything: staging only.
    let Decision::Run { scope, skipped } = suspend::check(&world, &Scope::default()).await.unwrap()
    else {
        panic!("nothing would run")
    };
    assert_eq!(skipped, vec![s]);
    assert_eq!(scope.except, vec!["prod".to_owned()]);
    let work = once(world.clone(), &scope, options());
    let report = leased(&world, Duration::ZERO, Duration::from_secs(30), work)
        .await
        .unwrap();
    assert!(report.steps > 0);
    let staging = |slot| fleet.instance(&SlotRef::new("staging", "api", "web-3", slot));
    assert!(
        [staging("blue"), staging("green")]
            .iter()
            .any(|i| i.as_ref().is_some_and(|(v, _)| v == "2.0")),
        "{:?}",
        fleet.log()
    );
    assert_eq!(weights(&fleet), before, "prod was changed");
    assert!(
        !fleet
            .log()
            .iter()
            .any(|l| l.contains("web-1") || l.contains("web-2") || l.contains("kf_prod")),
        "{:?}",
        fleet.log()
    );
    assert_eq!(fleet.violations(), Vec::<String>::new());

    // Resumed: the next pass rolls prod out.
    resume(&world, None).await.unwrap();
    assert_eq!(
        suspend::check(&world, &Scope::default()).await.unwrap(),
        Decision::Run {
            scope: Scope::default(),
            skipped: vec![]
        }
    );
    pass(&world).await.unwrap();
    assert_eq!(weights(&fleet), served_by("2.0"));
}

#[tokio::test(start_paused = true)]
async fn a_global_suspension_stops_every_pass_until_it_ends() {
    let (_fleet, world) = two_envs();
    let s = suspend(&world, None, HOUR, "freeze").await.unwrap();
    for scope in [
        Scope::default(),
        Scope {
            env: Some("staging".into()),
            ..Scope::default()
        },
    ] {
        assert_eq!(
            suspend::check(&world, &scope).await.unwrap(),
            Decision::Suspended(vec![s.clone()])
        );
    }
    tokio::time::advance(HOUR).await;
    assert!(matches!(
        suspend::check(&world, &Scope::default()).await.unwrap(),
        Decision::Run { skipped, .. } if skipped.is_empty()
    ));
}
