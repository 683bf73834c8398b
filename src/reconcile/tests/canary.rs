//! Canary passes: steps and analysis verdicts, promote, gates and `--max-wait`, resume from the
//! balancer's weights, rollback (never onto a stable version that is down), abort.

use super::*;

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
        text.contains("rolled back, read back: prod/api traffic goes to 1.0 on web-1_blue (weight 100, UP), web-2_blue (weight 100, UP); no instance of 2.0 runs"),
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
    // The last good version is tried (it runs, but the balancer never finds it UP), and the
    // message says from what it read back that nothing was rolled back.
    assert!(text.contains("the cleanup (bringing back 1.0) failed: step 2 (enable kf_prod_api/web-1_blue on edge (weight 0, wait UP)) failed: balancer edge did not find kf_prod_api/web-1_blue UP within 30s"), "{text}");
    blames_the_version(&err);
    assert!(
        text.contains("NOT rolled back: 2.0 keeps traffic (prod/api traffic goes to 1.0 on web-1_blue (weight 80, DOWN), web-2_blue (weight 80, DOWN); 2.0 on web-1_green (weight 20, UP), web-2_green (weight 20, UP)); 2.0 still runs on web-1, web-2"),
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
            world.write_rollout(&mut record).await.unwrap();
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

/// The record's compare-and-swap, with the race made deterministic: the fake ledger lets
/// `kube-free abort` write between the pause's read of the record and its own write ("paused").
/// Without the swap the pause's write would put the rollout back to paused and the abort would be
/// lost.
#[tokio::test(start_paused = true)]
async fn an_abort_written_between_a_pauses_read_and_its_write_is_not_lost() {
    let (fleet, world) = serving_one("{ canary: { steps: [{ weight: 20, pause: {} }] } }");
    fleet.meanwhile(
        |new| new.phase == Phase::Paused,
        |stored| {
            stored.phase = Phase::Aborted;
            stored.outcome = Some("aborted by `kube-free abort`".into());
        },
    );
    let err = pass(&world).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("the rollout of 2.0 ended (aborted): aborted by `kube-free abort`"),
        "{err}"
    );
    blames_the_version(&err);
    assert_eq!(weights(&fleet), served_by("1.0"));
    let record = fleet.rollout("prod", "api").unwrap();
    assert_eq!(record.phase, Phase::Aborted);
    assert_eq!(
        record.outcome.as_deref(),
        Some("aborted by `kube-free abort`")
    );
}

/// A promote written between the run's read and its write is kept (the run takes the gate's
/// word and writes again), and the run goes on through the gate it opened.
#[tokio::test(start_paused = true)]
async fn a_promote_written_between_a_pauses_read_and_its_write_is_not_lost() {
    let (fleet, world) = serving_one("{ canary: { steps: [{ weight: 20, pause: {} }] } }");
    fleet.meanwhile(
        |new| new.phase == Phase::Paused,
        |stored| stored.promote = crate::state::Promote::Step(0),
    );
    let waiting = Options {
        parallel: 8,
        max_wait: Some(Duration::from_secs(5)),
    };
    pass_with(&world, waiting).await.unwrap();
    assert_eq!(weights(&fleet), served_by("2.0"));
    assert_eq!(
        fleet.rollout("prod", "api").unwrap().phase,
        Phase::Succeeded
    );
}

/// A gate whose write finds the record changed since it read it reads it again and applies its
/// change to what it finds: a promote ends the pause the rollout stands at now.
#[tokio::test(start_paused = true)]
async fn a_promote_that_meets_another_write_applies_itself_to_the_new_record() {
    let (fleet, world) = serving_one(
        "{ canary: { steps: [{ weight: 20, pause: {} }, { weight: 50, pause: {} }] } }",
    );
    let err = pass(&world).await.unwrap_err();
    assert_eq!(err.next(), Next::Promotion, "{err}");
    // The run moves on to step 1 between the promote's read (step 0) and its write.
    fleet.meanwhile(
        |new| new.promote == crate::state::Promote::Step(0),
        |stored| stored.step = 1,
    );
    let said = promote(&world, "prod", "api", false).await.unwrap();
    assert!(said.contains("the pause of step 1 ends"), "{said}");
    let record = fleet.rollout("prod", "api").unwrap();
    assert_eq!(
        (record.step, record.promote),
        (1, crate::state::Promote::Step(1))
    );
}

/// Writes down the canary events a run tells its observer, and the ends of its pause steps.
#[derive(Default)]
struct Heard(std::sync::Mutex<Vec<String>>);

impl crate::execute::Progress for Heard {
    fn event(&self, event: crate::execute::Event<'_>) {
        use crate::execute::Event;
        let line = match event {
            Event::CanaryWeight {
                env,
                app,
                version,
                weight,
            } => format!("{env}/{app} {version} at {weight}%"),
            Event::CanaryPause {
                weight,
                until: None,
                ..
            } => format!("gate at {weight}%"),
            Event::CanaryPause {
                weight,
                until: Some(t),
                ..
            } => format!("pause at {weight}% until {t}"),
            Event::Done {
                action: Action::Pause { step, .. },
                ..
            } => format!("pause {step} done"),
            Event::Stopped {
                action: Action::Pause { step, .. },
                waits,
                ..
            } => format!("pause {step} stopped, waits={waits}"),
            _ => return,
        };
        self.0.lock().unwrap().push(line);
    }
}

#[tokio::test(start_paused = true)]
async fn the_observer_hears_each_canary_weight_and_when_each_pause_ends() {
    let gate = CANARY.replace("{ weight: 50, pause: 10s }", "{ weight: 50, pause: {} }");
    let (_fleet, world) = serving_one(&gate);
    let heard = Arc::new(Heard::default());
    world.set_progress(heard.clone());
    let start = world.clock().now();
    let err = pass(&world).await.unwrap_err();
    assert_eq!(err.next(), Next::Promotion, "{err}");
    assert_eq!(
        *heard.0.lock().unwrap(),
        [
            "prod/api 2.0 at 20%".to_owned(),
            format!("pause at 20% until {}", start + 10),
            "pause 0 done".to_owned(),
            "prod/api 2.0 at 50%".to_owned(),
            "gate at 50%".to_owned(),
            "pause 1 stopped, waits=true".to_owned(),
        ]
    );
}
