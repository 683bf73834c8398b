//! Execution: walks a plan's graph with tokio — a step starts when every step before it finished,
//! at most `parallel` at once, each within its deadline — and reaches the world only through
//! [`Effects`], so the same engine runs on fakes in tests and on real hosts. On the first failure it
//! starts nothing new, lets running steps finish, and reports the failure. What it does as it goes
//! (the plan, each step started, done, waiting or failed) is also said to a [`Progress`] observer,
//! which knows nothing of terminals here: `progress.rs` draws it on one.

use crate::plan::{Action, Plan};
use petgraph::graph::NodeIndex;
use petgraph::Direction;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// What a step does to the world. Implementations check whether the step is done before acting,
/// and verify after.
#[async_trait::async_trait]
pub trait Effects: Send + Sync + 'static {
    async fn apply(&self, action: &Action) -> Result<(), StepError>;
    /// Longest a step may take.
    fn deadline(&self, action: &Action) -> Duration;
    /// Why no new step may start (the run was asked to stop), if it was.
    fn stopping(&self) -> Option<StepError> {
        None
    }
}

/// Whose doing a step's failure is, which decides what the run does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The new version's own: it does not start, is never ready, the balancer never finds it UP, it
    /// fails its analysis, or an operator aborted it. The rollout is cleaned up and the version
    /// quarantined.
    Version,
    /// A host or the balancer failed a command, or a safety rule refused the step. The rollout is
    /// cleaned up; the version is not quarantined, and a later run tries again.
    Host,
    /// A host could not be reached (the connection was lost, perhaps after a command that changes
    /// something was sent, or it did not answer in time): the run stops and the rollout is left as
    /// it is for a later run.
    Unreachable,
    /// This run no longer holds its lease: it changes nothing more.
    Fenced,
    /// It must wait longer than this run may (a pause beyond `--max-wait`, a gate): the run stops
    /// here, nothing is undone, and a later run resumes at this step. `until`: when the wait ends
    /// (seconds since the Unix epoch); `None` for a gate.
    Waiting { until: Option<u64> },
    /// A signal asked the run to stop: no new step starts, nothing is undone.
    Interrupted,
}

/// Why a step did not finish: whose doing it is, and the cause (a typed error, with its own
/// causes).
#[derive(Debug)]
pub struct StepError {
    pub fault: Fault,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

impl StepError {
    pub fn new(fault: Fault, cause: impl std::error::Error + Send + Sync + 'static) -> StepError {
        StepError {
            fault,
            cause: Box::new(cause),
        }
    }

    /// The step waits or was stopped by a signal: nothing failed.
    pub fn waits(&self) -> bool {
        matches!(self.fault, Fault::Waiting { .. } | Fault::Interrupted)
    }
}

/// Displays as its cause, whose own causes are its sources.
impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cause.fmt(f)
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.source()
    }
}

/// A step that did not finish, as the run reports it. Its text carries the whole cause chain
/// (what the run did about it follows it in the run's own error), so it has no `source`.
#[derive(Debug, thiserror::Error)]
#[error("step {number} ({action}) {}: {}", if .error.waits() { "waits" } else { "failed" }, crate::error::chain(.error))]
pub struct StepFailed {
    pub number: usize,
    pub action: Action,
    pub error: StepError,
}

/// A step that did not finish within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("did not finish within its deadline of {}", crate::desired::duration::format(*.0))]
pub struct Overran(pub Duration);

/// What a run says about itself as it goes, to a [`Progress`] observer. Steps are numbered as in
/// the run's logs and errors: step `n` is `steps[n - 1]` of the plan's [`Event::Plan`].
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A plan starts: its steps in order.
    Plan { steps: &'a [Action] },
    /// A step started.
    Started { step: usize, action: &'a Action },
    /// A step finished, in `took`.
    Done {
        step: usize,
        action: &'a Action,
        took: Duration,
    },
    /// A step ended without finishing: it waits (a pause or gate longer than the run may wait, a
    /// signal), or it failed.
    Stopped {
        step: usize,
        action: &'a Action,
        took: Duration,
        waits: bool,
    },
    /// The rollout of `env`/`app` is cleaned up after its failed step (the plan that failed is
    /// over): the cleanup's plan follows.
    CleaningUp { env: &'a str, app: &'a str },
    /// A canary's share of the traffic was set (`weigh`).
    CanaryWeight {
        env: &'a str,
        app: &'a str,
        version: &'a str,
        weight: u8,
    },
    /// A canary's pause waits, the canary at `weight`: until `until` (seconds since the Unix
    /// epoch, as the run's clock says), or, when `None`, for `kube-free promote`. Said again when
    /// the analysis moves the end.
    CanaryPause {
        env: &'a str,
        app: &'a str,
        version: &'a str,
        weight: u8,
        until: Option<u64>,
    },
}

/// Who hears a run's [`Event`]s. Called from the run's tasks as things happen: it must return at
/// once and never fail the run.
pub trait Progress: Send + Sync {
    fn event(&self, event: Event<'_>);
}

/// Hears nothing: a run nobody watches live (logs still say everything).
pub struct Unwatched;

impl Progress for Unwatched {
    fn event(&self, _: Event<'_>) {}
}

/// What ran.
#[derive(Debug, Default)]
pub struct Report {
    /// Steps that finished, in the order they finished, with how long each took.
    pub done: Vec<(Action, Duration)>,
}

/// Runs `plan` through `effects`, at most `parallel` steps at once, telling `progress` as it goes.
pub async fn run(
    plan: &Plan,
    effects: Arc<dyn Effects>,
    parallel: usize,
    progress: &dyn Progress,
) -> Result<Report, StepFailed> {
    let order = plan.order();
    let steps: Vec<Action> = order.iter().map(|n| plan.graph[*n].clone()).collect();
    progress.event(Event::Plan { steps: &steps });
    let number: BTreeMap<NodeIndex, usize> =
        order.iter().enumerate().map(|(i, n)| (*n, i + 1)).collect();
    let mut waiting_on: BTreeMap<NodeIndex, usize> = order
        .iter()
        .map(|&n| {
            (
                n,
                plan.graph
                    .neighbors_directed(n, Direction::Incoming)
                    .count(),
            )
        })
        .collect();
    // Ready steps, by their number so that runs are deterministic.
    let mut ready: BTreeSet<(usize, NodeIndex)> = waiting_on
        .iter()
        .filter(|(_, w)| **w == 0)
        .map(|(n, _)| (number[n], *n))
        .collect();
    let mut running = JoinSet::new();
    let mut report = Report::default();
    let mut failure: Option<StepFailed> = None;
    loop {
        while failure.is_none() && running.len() < parallel.max(1) {
            let Some((num, node)) = ready.pop_first() else {
                break;
            };
            if let Some(error) = effects.stopping() {
                failure = Some(StepFailed {
                    number: num,
                    action: plan.graph[node].clone(),
                    error,
                });
                break;
            }
            let action = plan.graph[node].clone();
            let effects = effects.clone();
            let deadline = effects.deadline(&action);
            progress.event(Event::Started {
                step: num,
                action: &action,
            });
            running.spawn(async move {
                let started = Instant::now();
                tracing::info!(step = num, host = action.host().unwrap_or("-"), %action, "step started");
                let result = match tokio::time::timeout(deadline, effects.apply(&action)).await {
                    Ok(r) => r,
                    // Whose doing is not known: the host or balancer did not let it finish.
                    Err(_) => Err(StepError::new(Fault::Host, Overran(deadline))),
                };
                let took = started.elapsed();
                match &result {
                    Ok(()) => tracing::info!(step = num, host = action.host().unwrap_or("-"), took_ms = took.as_millis() as u64, %action, "step done"),
                    Err(e) if e.waits() => tracing::info!(step = num, host = action.host().unwrap_or("-"), %action, reason = %crate::error::chain(e), "step waits"),
                    Err(e) => tracing::error!(step = num, host = action.host().unwrap_or("-"), took_ms = took.as_millis() as u64, %action, fault = ?e.fault, error = %crate::error::chain(e), "step failed"),
                }
                (node, num, action, took, result)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (node, num, action, took, result) = joined.expect("steps do not panic");
        match &result {
            Ok(()) => progress.event(Event::Done {
                step: num,
                action: &action,
                took,
            }),
            Err(e) => progress.event(Event::Stopped {
                step: num,
                action: &action,
                took,
                waits: e.waits(),
            }),
        }
        match result {
            Ok(()) => {
                report.done.push((action, took));
                for next in plan.graph.neighbors_directed(node, Direction::Outgoing) {
                    let w = waiting_on.get_mut(&next).expect("every step is counted");
                    *w -= 1;
                    if *w == 0 {
                        ready.insert((number[&next], next));
                    }
                }
            }
            Err(error) => {
                // A failure outranks a wait: it must be cleaned up.
                if failure.as_ref().is_none_or(|f| f.error.waits()) {
                    failure = Some(StepFailed {
                        number: num,
                        action,
                        error,
                    });
                }
            }
        }
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::SlotRef;
    use std::sync::Mutex;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Said(&'static str);

    /// Records when each step started and ended; fails the steps it is told to.
    struct Fake {
        log: Mutex<Vec<String>>,
        fail: Option<String>,
        waits: Option<String>,
        delay: Duration,
        in_flight: Mutex<(usize, usize)>,
    }

    #[async_trait::async_trait]
    impl Effects for Fake {
        async fn apply(&self, action: &Action) -> Result<(), StepError> {
            {
                let mut f = self.in_flight.lock().unwrap();
                f.0 += 1;
                f.1 = f.1.max(f.0);
            }
            self.log.lock().unwrap().push(format!("begin {action}"));
            tokio::time::sleep(self.delay).await;
            self.log.lock().unwrap().push(format!("end {action}"));
            self.in_flight.lock().unwrap().0 -= 1;
            if self.fail.as_deref() == Some(&action.to_string()) {
                return Err(StepError::new(Fault::Version, Said("it broke")));
            }
            if self.waits.as_deref() == Some(&action.to_string()) {
                return Err(StepError::new(
                    Fault::Waiting { until: None },
                    Said("not yet"),
                ));
            }
            Ok(())
        }
        fn deadline(&self, action: &Action) -> Duration {
            if matches!(action, Action::Probe { .. }) {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(60)
            }
        }
    }

    fn at(host: &str) -> SlotRef {
        SlotRef::new("e", "a", host, "blue")
    }

    fn plan() -> Plan {
        let mut p = Plan::default();
        let s1 = p.graph.add_node(Action::Start {
            at: at("h1"),
            version: "2".into(),
        });
        let s2 = p.graph.add_node(Action::Start {
            at: at("h2"),
            version: "2".into(),
        });
        let s3 = p.graph.add_node(Action::Start {
            at: at("h3"),
            version: "2".into(),
        });
        let shift = p.graph.add_node(Action::Shift {
            balancer: "b".into(),
            env: "e".into(),
            app: "a".into(),
            to: vec![at("h1")],
            from: vec![],
        });
        for s in [s1, s2, s3] {
            p.graph.add_edge(s, shift, ());
        }
        p
    }

    fn fake(fail: Option<&str>, delay_ms: u64) -> Arc<Fake> {
        Arc::new(Fake {
            log: Mutex::new(vec![]),
            fail: fail.map(str::to_owned),
            waits: None,
            delay: Duration::from_millis(delay_ms),
            in_flight: Mutex::new((0, 0)),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn dependencies_are_respected_within_the_concurrency_limit() {
        let f = fake(None, 10);
        let report = run(&plan(), f.clone(), 2, &Unwatched).await.unwrap();
        assert_eq!(report.done.len(), 4);
        let log = f.log.lock().unwrap().clone();
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
        let shift = "begin shift e/a traffic on b to [h1_blue]";
        for h in ["h1", "h2", "h3"] {
            assert!(
                pos(&format!("end start e/a 2 in slot blue on {h}")) < pos(shift),
                "{log:?}"
            );
        }
        assert_eq!(
            f.in_flight.lock().unwrap().1,
            2,
            "at most two steps at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_step_stops_the_run_and_a_failure_outranks_it() {
        let mut f = Arc::try_unwrap(fake(None, 10)).ok().unwrap();
        f.waits = Some("start e/a 2 in slot blue on h1".into());
        let f = Arc::new(f);
        let err = run(&plan(), f.clone(), 4, &Unwatched).await.unwrap_err();
        assert!(err.error.waits(), "{err}");
        assert_eq!(err.error.to_string(), "not yet");
        assert!(err.to_string().contains("waits: not yet"), "{err}");
        assert!(!f.log.lock().unwrap().iter().any(|l| l.contains("shift")));

        let mut f = Arc::try_unwrap(fake(Some("start e/a 2 in slot blue on h3"), 10))
            .ok()
            .unwrap();
        f.waits = Some("start e/a 2 in slot blue on h1".into());
        let err = run(&plan(), Arc::new(f), 4, &Unwatched).await.unwrap_err();
        assert_eq!(
            err.error.fault,
            Fault::Version,
            "the failure is what is reported: {err}"
        );
        assert_eq!(err.number, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_stops_what_depends_on_it() {
        let f = fake(Some("start e/a 2 in slot blue on h2"), 10);
        let err = run(&plan(), f.clone(), 4, &Unwatched).await.unwrap_err();
        assert_eq!(err.number, 2);
        assert_eq!(err.error.to_string(), "it broke");
        assert_eq!(
            err.to_string(),
            "step 2 (start e/a 2 in slot blue on h2) failed: it broke"
        );
        assert!(
            !f.log.lock().unwrap().iter().any(|l| l.contains("shift")),
            "the shift never starts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_bound_every_step() {
        let mut p = Plan::default();
        p.graph.add_node(Action::Probe { at: at("h1") });
        let err = run(&p, fake(None, 1000), 1, &Unwatched).await.unwrap_err();
        assert_eq!(err.error.fault, Fault::Host);
        assert!(
            err.to_string().contains("deadline of 50ms"),
            "{}",
            err.error
        );
    }

    /// Writes down what it hears, one line per event.
    #[derive(Default)]
    struct Heard(Mutex<Vec<String>>);

    impl Progress for Heard {
        fn event(&self, event: Event<'_>) {
            let line = match event {
                Event::Plan { steps } => format!("plan of {}", steps.len()),
                Event::Started { step, .. } => format!("started {step}"),
                Event::Done { step, .. } => format!("done {step}"),
                Event::Stopped { step, waits, .. } => format!("stopped {step} waits={waits}"),
                other => format!("{other:?}"),
            };
            self.0.lock().unwrap().push(line);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_observer_hears_the_plan_then_each_step_start_and_end_by_its_number() {
        let heard = Heard::default();
        run(&plan(), fake(None, 10), 1, &heard).await.unwrap();
        assert_eq!(
            *heard.0.lock().unwrap(),
            [
                "plan of 4",
                "started 1",
                "done 1",
                "started 2",
                "done 2",
                "started 3",
                "done 3",
                "started 4",
                "done 4"
            ]
        );

        let heard = Heard::default();
        let f = fake(Some("start e/a 2 in slot blue on h2"), 10);
        run(&plan(), f, 1, &heard).await.unwrap_err();
        assert_eq!(
            *heard.0.lock().unwrap(),
            [
                "plan of 4",
                "started 1",
                "done 1",
                "started 2",
                "stopped 2 waits=false"
            ],
            "nothing starts after a failure"
        );
    }
}
