//! Single live steps on the fake fleet: the drain's wait and its refusal, the shift's refusals,
//! and the state saved after every step that changes the balancer.

use super::*;

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
        let report = crate::execute::run(&plan, effects, 1, &crate::execute::Unwatched)
            .await
            .unwrap();
        assert!(report.done.len() > 10, "{strategy}: {}", plan.render_text());
        assert_eq!(weights(&fleet), served_by("2.0"));
        assert!(fleet.log().iter().any(|l| l == "save kf_prod_api"));
    }
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
