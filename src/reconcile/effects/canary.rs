//! Canary steps: `weigh` gives the canary its share (and starts the step's analysis window),
//! `pause` waits out the step or its gate — reading promote and abort from the rollout record,
//! stopping the run when the wait is longer than `--max-wait` — and then judges the window
//! (`rules::judge`).

use super::{Live, Trouble};
use crate::desired::{Pause, Strategy};
use crate::drivers::ProbeError;
use crate::execute::{Event, Fault, StepError};
use crate::names::{backend_name, ServerKey, SlotRef};
use crate::observed::Servers;
use crate::reconcile::rules::{self, Decision, Window};
use crate::state::{Counters, Phase, Promote, RolloutRecord, StepFigures};
use std::time::Duration;

/// Why a pause stops the run without failing it.
#[derive(Debug, thiserror::Error)]
pub enum Wait {
    #[error("canary step {step} pauses {} more, longer than --max-wait", crate::desired::duration::format(*.remaining))]
    Pause { step: usize, remaining: Duration },
    #[error("canary step {step} waits for `kube-free promote {app} --env {env}`")]
    Gate {
        step: usize,
        app: String,
        env: String,
    },
    #[error("canary step {step}: interrupted in its pause")]
    Interrupted { step: usize },
}

/// How a canary step ended its rollout: the version's doing.
#[derive(Debug, thiserror::Error)]
pub enum Judged {
    #[error("aborted by `kube-free abort` at step {step}")]
    Aborted { step: usize },
    #[error("analysis failed at step {step}")]
    Check {
        step: usize,
        #[source]
        check: CheckFailed,
    },
    #[error("analysis failed at step {step}: error rate {rate:.3} over {requests} requests is above {max}")]
    ErrorRate {
        step: usize,
        rate: f64,
        requests: u64,
        max: f64,
    },
    #[error("analysis inconclusive at step {step}: {requests} requests, fewer than min_requests {min}, within the progress deadline of {}", crate::desired::duration::format(*.deadline))]
    Inconclusive {
        step: usize,
        requests: u64,
        min: u64,
        deadline: Duration,
    },
}

/// An analysis check that a canary instance did not pass.
#[derive(Debug, thiserror::Error)]
#[error("check {path} on {host}")]
pub struct CheckFailed {
    path: String,
    host: String,
    #[source]
    cause: ProbeError,
}

/// Reads in a pause that kept failing.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed for {} s", .secs)]
pub struct ReadsFailing {
    what: &'static str,
    secs: u64,
    #[source]
    cause: StepError,
}

/// Consecutive failed reads of one kind in a pause: tried again each second for [`Failing::GRACE`],
/// then the step stops as unreachable (a host that stays away must not hold a run until its
/// deadline, and its absence is not the version's fault).
#[derive(Default)]
pub(super) struct Failing(Option<tokio::time::Instant>);

impl Failing {
    const GRACE: Duration = Duration::from_secs(10);

    /// The value of a read that worked (and the count starts over); `None` after a pause of a
    /// second when it failed within the grace; an error once reads have failed for longer.
    pub(super) async fn attempt<T>(
        &mut self,
        what: &'static str,
        read: Result<T, StepError>,
    ) -> Result<Option<T>, StepError> {
        let e = match read {
            Ok(value) => {
                self.0 = None;
                return Ok(Some(value));
            }
            Err(e) => e,
        };
        let since = *self.0.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= Self::GRACE {
            return Err(StepError::new(
                Fault::Unreachable,
                ReadsFailing {
                    what,
                    secs: Self::GRACE.as_secs(),
                    cause: e,
                },
            ));
        }
        tracing::warn!(error = %crate::error::chain(&e), "{what} failed; trying again");
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(None)
    }
}

/// The cumulative counters of `slots`' servers among `servers`, summed.
pub(super) fn sum_counters(servers: &Servers, slots: &[SlotRef]) -> Counters {
    slots
        .iter()
        .filter_map(|r| servers.get(&r.server_key()))
        .fold(Counters::default(), |c, s| Counters {
            requests: c.requests + s.counters.requests(),
            errors: c.errors + s.counters.errors(),
        })
}

impl Live {
    /// The cumulative counters of `slots`' servers now (summed).
    pub(super) async fn counters(
        &self,
        balancer: &str,
        slots: &[SlotRef],
    ) -> Result<Counters, StepError> {
        Ok(sum_counters(&self.servers(balancer).await?, slots))
    }

    /// GETs each of `paths` from every canary instance; the first that does not answer 2xx.
    async fn run_checks(&self, canary: &[SlotRef], paths: &[String]) -> Result<(), CheckFailed> {
        for at in canary {
            for path in paths {
                self.world
                    .probe_path(&at.host, &at.app, self.port(at), path)
                    .await
                    .map_err(|cause| CheckFailed {
                        path: path.clone(),
                        host: at.host.clone(),
                        cause,
                    })?;
            }
        }
        Ok(())
    }

    /// Makes `step` the step in progress: its analysis window starts now, from the canary's
    /// counters now.
    async fn start_window(
        &self,
        record: &mut RolloutRecord,
        step: usize,
        balancer: &str,
        canary: &[SlotRef],
    ) -> Result<(), StepError> {
        record.step = step;
        record.step_started_at = self.world.clock().now();
        record.step_base = self.counters(balancer, canary).await?;
        Ok(())
    }

    /// Canary step `step`: the canary's share to `weight`%, then the record says the step is in
    /// progress (its window starts now, unless it already had started).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn weigh(
        &self,
        balancer: &str,
        env: &str,
        app: &str,
        version: &str,
        step: usize,
        weight: u8,
        canary: &[SlotRef],
        stable: &[SlotRef],
    ) -> Result<(), StepError> {
        let w = u32::from(weight);
        let weights: Vec<(ServerKey, u32)> = canary
            .iter()
            .map(|r| (r.server_key(), w))
            .chain(stable.iter().map(|r| (r.server_key(), 100 - w)))
            .collect();
        let must_be_up = if w > 0 { canary } else { &[] };
        self.set_weights(balancer, &weights, must_be_up).await?;
        self.save_state(balancer, &backend_name(env, app)).await?;
        let mut record = self.record_for(env, app, version).await?;
        if record.step != step || record.updated_at == 0 {
            self.start_window(&mut record, step, balancer, canary)
                .await?;
        }
        record.phase = Phase::Progressing;
        tracing::info!(%env, %app, %version, step, weight, "canary weight set");
        self.world.progress().event(Event::CanaryWeight {
            env,
            app,
            version,
            weight,
        });
        self.save_record(&mut record).await
    }

    /// Canary step `step`'s pause: waits until it is over (or promoted), polling the record for
    /// `kube-free promote` and `kube-free abort`; a wait longer than `--max-wait` ends the run here
    /// (exit 3; the next run resumes). Then the analysis of the step's window: a failure rolls back,
    /// too few requests extend the window (up to `progress_deadline`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn pause(
        &self,
        balancer: &str,
        env: &str,
        app: &str,
        version: &str,
        step: usize,
        pause: Pause,
        canary: &[SlotRef],
    ) -> Result<(), StepError> {
        let strategy = self.strategy(env, app);
        let Strategy::Canary {
            analysis,
            progress_deadline,
            ..
        } = strategy
        else {
            return Err(Trouble::NotCanary {
                env: env.to_owned(),
                app: app.to_owned(),
            }
            .into());
        };
        let mut record = self.record_for(env, app, version).await?;
        if record.step > step {
            return Ok(());
        }
        if record.step < step || record.updated_at == 0 {
            self.start_window(&mut record, step, balancer, canary)
                .await?;
            self.save_record(&mut record).await?;
        }
        let waited_from = tokio::time::Instant::now();
        let pause_secs = match pause {
            Pause::For(d) => d.as_secs_f64().ceil() as u64,
            Pause::UntilPromoted => 0,
        };
        // The window ends here; too few requests move it (never past the progress deadline).
        let mut window_end = record.step_started_at + pause_secs;
        let give_up = record.step_started_at + pause_secs + progress_deadline.as_secs().max(1);
        let (mut failing_record, mut failing_counters) = (Failing::default(), Failing::default());
        // What the run's observer was last told of this wait (`Some(None)`: the gate).
        let mut told: Option<Option<u64>> = None;
        loop {
            // Promote and abort come from other processes, through the record. A read that fails
            // (the transport already retried a dropped connection) is tried again for a while.
            let read = self
                .world
                .read_rollout(env, app)
                .await
                .map_err(StepError::from);
            let Some(current) = failing_record
                .attempt("reading the rollout record", read)
                .await?
            else {
                continue;
            };
            if let Some(c) = current.as_ref().filter(|c| c.version == version) {
                if c.phase == Phase::Aborted {
                    return Err(StepError::new(Fault::Version, Judged::Aborted { step }));
                }
                record.promote = c.promote;
            }
            let promoted =
                matches!(record.promote, Promote::All) || record.promote == Promote::Step(step);
            let now = self.world.clock().now();
            let gate_open = match pause {
                Pause::For(_) => true,
                Pause::UntilPromoted => promoted,
            };
            if gate_open && (now >= window_end || promoted) {
                let Some(a) = analysis else { break };
                let base = record.step_base;
                let read = self.counters(balancer, canary).await;
                let Some(counters) = failing_counters
                    .attempt("reading the balancer's counters", read)
                    .await?
                else {
                    continue;
                };
                if counters.requests < base.requests {
                    // The balancer's counters restarted (a reload): count from here.
                    record.step_base = counters;
                    window_end = (now + pause_secs.max(1)).min(give_up);
                    self.save_record(&mut record).await?;
                    continue;
                }
                let window = Window {
                    requests: counters.requests - base.requests,
                    errors: counters.errors.saturating_sub(base.errors),
                };
                let check_failed = self.run_checks(canary, &a.checks).await.err();
                let verdict = rules::judge(window, a, check_failed.is_some());
                let figures = StepFigures {
                    step,
                    weight: strategy.canary_weight(step),
                    requests: window.requests,
                    errors: window.errors,
                    error_rate: window.error_rate(),
                    verdict: verdict.as_str().to_owned(),
                };
                tracing::info!(%env, %app, %version, step, requests = window.requests, errors = window.errors, error_rate = window.error_rate(), verdict = verdict.as_str(), "canary analysis");
                record.analysis.push(figures);
                if record.analysis.len() > 100 {
                    record.analysis.remove(0);
                }
                let judged = match rules::decide(verdict, promoted, now >= give_up) {
                    Decision::Proceed => break,
                    Decision::Extend => {
                        window_end = (now + pause_secs.max(5)).min(give_up);
                        self.save_record(&mut record).await?;
                        continue;
                    }
                    Decision::Fail => match check_failed {
                        Some(check) => Judged::Check { step, check },
                        None => Judged::ErrorRate {
                            step,
                            rate: window.error_rate(),
                            requests: window.requests,
                            max: a.max_error_rate,
                        },
                    },
                    Decision::GiveUp => Judged::Inconclusive {
                        step,
                        requests: window.requests,
                        min: a.min_requests,
                        deadline: *progress_deadline,
                    },
                };
                record.outcome = Some(crate::error::chain(&judged));
                self.save_record(&mut record).await?;
                return Err(StepError::new(Fault::Version, judged));
            }
            if self.world.is_interrupted() {
                return Err(StepError::new(
                    Fault::Interrupted,
                    Wait::Interrupted { step },
                ));
            }
            // Still waiting: how long, and may this run wait that long?
            let until = gate_open.then_some(window_end);
            if told != Some(until) {
                told = Some(until);
                self.world.progress().event(Event::CanaryPause {
                    env,
                    app,
                    version,
                    weight: strategy.canary_weight(step),
                    until,
                });
            }
            let remaining = gate_open.then(|| Duration::from_secs(window_end.saturating_sub(now)));
            let allowed = self
                .max_wait
                .map(|m| m.saturating_sub(waited_from.elapsed()));
            // A gate waits for a promote at most --max-wait (not at all without it).
            let must_stop = match remaining {
                Some(r) => allowed.is_some_and(|a| r > a),
                None => allowed.is_none_or(|a| a.is_zero()),
            };
            if must_stop {
                let phase = if gate_open {
                    Phase::Progressing
                } else {
                    Phase::Paused
                };
                if record.phase != phase {
                    record.phase = phase;
                    self.save_record(&mut record).await?;
                }
                return Err(match remaining {
                    Some(remaining) => StepError::new(
                        Fault::Waiting {
                            until: Some(window_end),
                        },
                        Wait::Pause { step, remaining },
                    ),
                    None => StepError::new(
                        Fault::Waiting { until: None },
                        Wait::Gate {
                            step,
                            app: app.to_owned(),
                            env: env.to_owned(),
                        },
                    ),
                });
            }
            if !gate_open && record.phase != Phase::Paused {
                record.phase = Phase::Paused;
                self.save_record(&mut record).await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.start_window(&mut record, step + 1, balancer, canary)
            .await?;
        record.phase = Phase::Progressing;
        if record.promote == Promote::Step(step) {
            record.promote = Promote::No;
        }
        self.save_record(&mut record).await
    }
}
