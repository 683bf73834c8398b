//! The audit log on the fake fleet: a pass that changed something appends one line on every
//! balancer host of the environments it was about (the same line), with its commit, who, command,
//! steps, outcome and rollouts; a pass that changed nothing appends nothing; a failed pass says it
//! rolled back (or failed) and where it stopped; a watcher that comes back to a gate writes one
//! line; the gates, `suspend` and `resume` append theirs.

use super::suspend::two_envs;
use super::*;
use crate::reconcile::audit;
use crate::state::AuditLine;

/// One pass under the lease as `reconcile --once` runs it, with its audit line (appended when
/// there is one).
async fn audited(
    world: &Arc<World>,
    scope: &Scope,
    options: Options,
) -> (Result<Report, ReconcileError>, Option<AuditLine>) {
    let command = audit::command("reconcile --once", scope);
    let work = async {
        let start = audit::start(world);
        let result = once(world.clone(), scope, options).await;
        let line = audit::pass_line(world, &start, &command, scope, &result);
        if let Some(line) = &line {
            audit::append(world, line).await;
        }
        Ok::<_, ReconcileError>((result, line))
    };
    leased(world, Duration::ZERO, Duration::from_secs(30), work)
        .await
        .unwrap()
}

/// (env, app, version, from, result) of each rollout of `line`.
fn rollouts(line: &AuditLine) -> Vec<(&str, &str, &str, Option<&str>, &str)> {
    line.rollouts
        .iter()
        .map(|r| {
            (
                r.env.as_str(),
                r.app.as_str(),
                r.version.as_str(),
                r.from.as_deref(),
                r.result.as_str(),
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_changing_pass_appends_its_line_on_every_balancer_host_of_its_environments() {
    let (fleet, world) = two_envs();
    let (result, line) = audited(&world, &Scope::default(), options()).await;
    let report = result.unwrap();
    let line = line.unwrap();
    for host in ["lb-1", "lb-2"] {
        assert_eq!(fleet.audit(host), vec![line.clone()], "{host}");
    }
    assert_eq!(line.commit, "r");
    assert_eq!(line.who, crate::reconcile::suspend::who());
    assert!(line.who.contains('@'), "{}", line.who);
    assert_eq!(line.command, "reconcile --once");
    assert_eq!(line.outcome, "converged");
    assert_eq!(line.steps, report.steps);
    assert!(line.steps > 0);
    // The fleet's clock starts at 1_700_000_000 (2023-11-14T22:13:20Z); the run took its bake.
    assert_eq!(line.time, "2023-11-14T22:13:20Z");
    assert!(line.duration_ms >= 5000, "{}", line.duration_ms);
    assert_eq!(line.envs, ["prod", "staging"]);
    assert_eq!(line.stopped_at, None);
    assert_eq!(
        rollouts(&line),
        [
            ("prod", "api", "2.0", Some("1.0"), "succeeded"),
            ("staging", "api", "2.0", None, "succeeded")
        ]
    );
    assert_eq!(line.rollouts[0].strategy, "blue-green");
    // The line as written: one JSON object with the documented fields.
    let json = serde_json::to_value(&line).unwrap();
    for field in [
        "time",
        "commit",
        "who",
        "command",
        "steps",
        "outcome",
        "duration_ms",
        "rollouts",
    ] {
        assert!(json.get(field).is_some(), "{field}: {json}");
    }

    // In sync now: a pass that changes nothing appends nothing.
    let (result, line) = audited(&world, &Scope::default(), options()).await;
    assert_eq!(result.unwrap().steps, 0);
    assert_eq!(line, None);
    assert_eq!(fleet.audit("lb-1").len(), 1);
    assert_eq!(fleet.audit("lb-2").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_scoped_pass_appends_only_on_the_balancer_host_of_its_environment() {
    let (fleet, world) = two_envs();
    let scope = Scope {
        env: Some("staging".into()),
        ..Scope::default()
    };
    let (result, line) = audited(&world, &scope, options()).await;
    result.unwrap();
    let line = line.unwrap();
    assert_eq!(line.command, "reconcile --once --env staging");
    assert_eq!(line.envs, ["staging"]);
    assert_eq!(
        rollouts(&line),
        [("staging", "api", "2.0", None, "succeeded")]
    );
    assert_eq!(fleet.audit("lb-2"), vec![line]);
    assert_eq!(fleet.audit("lb-1"), vec![]);
}

#[tokio::test(start_paused = true)]
async fn a_rolled_back_pass_says_so_and_where_it_stopped() {
    let (fleet, world) = rolling_out("blue-green", Behaviour::never_ready());
    let (result, line) = audited(&world, &Scope::default(), options()).await;
    blames_the_version(&result.unwrap_err());
    let line = line.unwrap();
    assert_eq!(fleet.audit("lb-1"), vec![line.clone()]);
    assert_eq!(line.outcome, "rolled-back");
    assert_eq!(
        rollouts(&line),
        [("prod", "api", "2.0", Some("1.0"), "rolled-back")]
    );
    assert!(
        line.stopped_at
            .as_deref()
            .is_some_and(|s| s.starts_with("probe prod/api")),
        "{line:?}"
    );
    // The starts and the cleanup's stops are steps done.
    assert!(line.steps >= 2, "{line:?}");

    // Quarantined now: a pass that does nothing appends nothing.
    let (result, line) = audited(&world, &Scope::default(), options()).await;
    assert!(matches!(result, Err(ReconcileError::Quarantined(_))));
    assert_eq!(line, None);
    assert_eq!(fleet.audit("lb-1").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_that_cannot_be_rolled_back_is_failed_and_a_lost_host_is_said() {
    // A first deploy that fails: nothing to bring back.
    let desired = crate::testing::two_hosts("blue-green");
    let fleet = Fleet::new(&desired);
    fleet.behave("2.0", Behaviour::exiting());
    let world = Arc::new(World::new(desired, "r".into(), fleet.drivers()));
    let (result, line) = audited(&world, &Scope::default(), options()).await;
    blames_the_version(&result.unwrap_err());
    let line = line.unwrap();
    assert_eq!(line.outcome, "failed");
    assert_eq!(rollouts(&line), [("prod", "api", "2.0", None, "failed")]);

    let (fleet, world) = serving_one("blue-green");
    fleet.lose_on_start("web-2");
    let (result, line) = audited(&world, &Scope::default(), options()).await;
    assert!(matches!(result, Err(ReconcileError::HostLost { .. })));
    let line = line.unwrap();
    assert_eq!(line.outcome, "host-lost");
    assert_eq!(
        rollouts(&line),
        [("prod", "api", "2.0", Some("1.0"), "stopped")]
    );
    assert_eq!(fleet.audit("lb-1"), vec![line]);
}

#[tokio::test(start_paused = true)]
async fn a_canary_at_a_gate_waits_and_a_watcher_coming_back_writes_it_once() {
    let (fleet, world) = serving_one(
        "{ canary: { steps: [{ weight: 20, pause: {} }, { weight: 50, pause: {} }] } }",
    );
    let scope = Scope::default();
    let mut last = None;
    // The watcher comes back to the gate every 10 s.
    for _ in 0..3 {
        let work = async {
            let start = audit::start(&world);
            let result = once(world.clone(), &scope, options()).await;
            let line = audit::pass_line(&world, &start, "watch", &scope, &result);
            if let Some(line) = &line {
                audit::append_once(&world, line, &mut last).await;
            }
            Ok::<_, ReconcileError>((result, line))
        };
        let (result, line) = leased(&world, Duration::ZERO, Duration::from_secs(30), work)
            .await
            .unwrap();
        assert!(result.unwrap_err().waits());
        let line = line.unwrap();
        assert_eq!(line.outcome, "waiting");
        assert_eq!(
            rollouts(&line),
            [("prod", "api", "2.0", Some("1.0"), "waiting")]
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let log = fleet.audit("lb-1");
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0]
            .stopped_at
            .as_deref()
            .is_some_and(|s| s.contains("step 0")),
        "{log:?}"
    );

    // A promote is a line of its own; the pass after it waits at the next gate: a new line.
    promote(&world, "prod", "api", false).await.unwrap();
    let log = fleet.audit("lb-1");
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].command, "promote api --env prod");
    assert_eq!(log[1].outcome, "promoted");
    assert_eq!(log[1].steps, 0);
    assert_eq!(
        rollouts(&log[1]),
        [("prod", "api", "2.0", Some("1.0"), "promoted")]
    );
    let work = async {
        let start = audit::start(&world);
        let result = once(world.clone(), &scope, options()).await;
        if let Some(line) = audit::pass_line(&world, &start, "watch", &scope, &result) {
            audit::append_once(&world, &line, &mut last).await;
        }
        Ok::<_, ReconcileError>(())
    };
    leased(&world, Duration::ZERO, Duration::from_secs(30), work)
        .await
        .unwrap();
    let log = fleet.audit("lb-1");
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(
        log[2]
            .stopped_at
            .as_deref()
            .is_some_and(|s| s.contains("step 1")),
        "{log:?}"
    );

    // An abort: its line counts the cleanup's steps.
    let said = abort(&world, "prod", "api", 8).await.unwrap();
    assert!(said.contains("read back"), "{said}");
    let log = fleet.audit("lb-1");
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(log[3].command, "abort api --env prod");
    assert_eq!(log[3].outcome, "aborted");
    assert!(log[3].steps > 0, "{log:?}");
    assert_eq!(
        rollouts(&log[3]),
        [("prod", "api", "2.0", Some("1.0"), "aborted")]
    );

    // A gate that finds nothing to do changes nothing, and writes nothing.
    assert!(promote(&world, "prod", "api", false).await.is_err());
    // A retry lifts the quarantine: a line too.
    retry(&world, "prod", "api").await.unwrap();
    let log = fleet.audit("lb-1");
    assert_eq!(
        log.iter().map(|l| l.outcome.as_str()).collect::<Vec<_>>(),
        ["waiting", "promoted", "waiting", "aborted", "retried"]
    );
    assert_eq!(log[4].command, "retry api --env prod");
}

#[tokio::test(start_paused = true)]
async fn suspend_and_resume_append_their_lines_and_a_resume_of_nothing_does_not() {
    let (fleet, world) = two_envs();
    suspend(
        &world,
        Some("prod"),
        Duration::from_secs(7200),
        "db migration",
    )
    .await
    .unwrap();
    let line = fleet.audit("lb-1").pop().unwrap();
    assert_eq!(line.command, "suspend --env prod --for 2h");
    assert_eq!(line.outcome, "suspended");
    assert_eq!(line.envs, ["prod"]);
    assert_eq!(line.rollouts, []);
    // Only the balancer host of prod.
    assert_eq!(fleet.audit("lb-2"), vec![]);
    resume(&world, Some("prod")).await.unwrap();
    resume(&world, Some("prod")).await.unwrap();
    let log = fleet.audit("lb-1");
    assert_eq!(
        log.iter().map(|l| l.command.as_str()).collect::<Vec<_>>(),
        ["suspend --env prod --for 2h", "resume --env prod"]
    );
    // Every environment: every balancer host.
    suspend(&world, None, Duration::from_secs(60), "freeze")
        .await
        .unwrap();
    let line = fleet.audit("lb-2").pop().unwrap();
    assert_eq!(line.command, "suspend --for 1m");
    assert_eq!(line.envs, ["prod", "staging"]);
    assert_eq!(fleet.audit("lb-1").last(), Some(&line));
}
