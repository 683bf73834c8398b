//! Execution: walks a plan's graph with tokio — a step starts when every step before it finished,
//! at most `parallel` at once, each within its deadline — and reaches the world only through
//! [`Effects`], so the same engine runs on fakes in tests and on real hosts. On the first failure it
//! starts nothing new, lets running steps finish, and reports the failure.

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
    fn stopping(&self) -> Option<String> {
        None
    }
}

/// Why a step did not finish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepError {
    /// It failed: the run stops and the rollout is cleaned up.
    Failed(String),
    /// A host could not be reached (the connection was lost, perhaps after a command that changes
    /// something was sent): the run stops, and the rollout is left as it is for a later run.
    Unreachable(String),
    /// It must wait longer than this run may (a pause beyond `--max-wait`, a gate): the run stops
    /// here, nothing is undone, and a later run resumes at this step.
    Waiting(String),
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        StepError::Failed(message)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("step {number} ({action}) {}: {message}", if *.waiting { "waits" } else { "failed" })]
pub struct StepFailed {
    pub number: usize,
    pub action: Action,
    pub message: String,
    /// The step waits (it did not fail): see [`StepError::Waiting`].
    pub waiting: bool,
    /// A host could not be reached: see [`StepError::Unreachable`].
    pub unreachable: bool,
}

/// What ran.
#[derive(Debug, Default)]
pub struct Report {
    /// Steps that finished, in the order they finished, with how long each took.
    pub done: Vec<(Action, Duration)>,
}

pub async fn run(
    plan: &Plan,
    effects: Arc<dyn Effects>,
    parallel: usize,
) -> Result<Report, StepFailed> {
    let order = plan.order();
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
            if let Some(reason) = effects.stopping() {
                failure = Some(StepFailed {
                    number: num,
                    action: plan.graph[node].clone(),
                    message: reason,
                    waiting: true,
                    unreachable: false,
                });
                break;
            }
            let action = plan.graph[node].clone();
            let effects = effects.clone();
            let deadline = effects.deadline(&action);
            running.spawn(async move {
                let started = Instant::now();
                tracing::info!(step = num, host = action.host().unwrap_or("-"), %action, "step started");
                let result = match tokio::time::timeout(deadline, effects.apply(&action)).await {
                    Ok(r) => r,
                    Err(_) => Err(StepError::Failed(format!("did not finish within its deadline of {}", crate::desired::duration::format(deadline)))),
                };
                let took = started.elapsed();
                match &result {
                    Ok(()) => tracing::info!(step = num, host = action.host().unwrap_or("-"), took_ms = took.as_millis() as u64, %action, "step done"),
                    Err(StepError::Failed(e) | StepError::Unreachable(e)) => tracing::error!(step = num, host = action.host().unwrap_or("-"), took_ms = took.as_millis() as u64, %action, error = %e, "step failed"),
                    Err(StepError::Waiting(e)) => tracing::info!(step = num, host = action.host().unwrap_or("-"), %action, reason = %e, "step waits"),
                }
                (node, num, action, took, result)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (node, num, action, took, result) = joined.expect("steps do not panic");
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
            Err(e) => {
                // A failure outranks a wait: it must be cleaned up.
                if failure.as_ref().is_none_or(|f| f.waiting) {
                    let (message, waiting, unreachable) = match e {
                        StepError::Failed(m) => (m, false, false),
                        StepError::Unreachable(m) => (m, false, true),
                        StepError::Waiting(m) => (m, true, false),
                    };
                    failure = Some(StepFailed {
                        number: num,
                        action,
                        message,
                        waiting,
                        unreachable,
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
                return Err(StepError::Failed("it broke".into()));
            }
            if self.waits.as_deref() == Some(&action.to_string()) {
                return Err(StepError::Waiting("not yet".into()));
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
        SlotRef {
            env: "e".into(),
            app: "a".into(),
            host: host.into(),
            slot: "blue".into(),
        }
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
        let report = run(&plan(), f.clone(), 2).await.unwrap();
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
        let err = run(&plan(), f.clone(), 4).await.unwrap_err();
        assert!(err.waiting, "{err}");
        assert_eq!(err.message, "not yet");
        assert!(err.to_string().contains("waits: not yet"), "{err}");
        assert!(!f.log.lock().unwrap().iter().any(|l| l.contains("shift")));

        let mut f = Arc::try_unwrap(fake(Some("start e/a 2 in slot blue on h3"), 10))
            .ok()
            .unwrap();
        f.waits = Some("start e/a 2 in slot blue on h1".into());
        let err = run(&plan(), Arc::new(f), 4).await.unwrap_err();
        assert!(!err.waiting, "the failure is what is reported: {err}");
        assert_eq!(err.number, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_stops_what_depends_on_it() {
        let f = fake(Some("start e/a 2 in slot blue on h2"), 10);
        let err = run(&plan(), f.clone(), 4).await.unwrap_err();
        assert_eq!(err.number, 2);
        assert_eq!(err.message, "it broke");
        assert!(
            !f.log.lock().unwrap().iter().any(|l| l.contains("shift")),
            "the shift never starts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_bound_every_step() {
        let mut p = Plan::default();
        p.graph.add_node(Action::Probe { at: at("h1") });
        let err = run(&p, fake(None, 1000), 1).await.unwrap_err();
        assert!(err.message.contains("deadline of 50ms"), "{}", err.message);
    }
}
