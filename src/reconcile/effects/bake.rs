//! The end of a rollout: `bake` watches the new servers for the app's bake while the old ones stay
//! ready (weight 0, running) — a server the balancer finds DOWN, an instance that exits, or an error
//! rate above the strategy's analysis gives the old ones all traffic back in one command and fails
//! the version — and `conclude` records the rollout as succeeded. A bake is recorded in the rollout
//! record when it begins, so that a run killed in it resumes where it was.

use super::canary::Failing;
use super::{Live, Trouble};
use crate::desired::Strategy;
use crate::execute::{Fault, StepError};
use crate::names::{backend_name, ServerKey, SlotRef};
use crate::observed::FULL_WEIGHT;
use crate::reconcile::rules::{self, Verdict, Window};
use crate::state::{Bake, Phase, Promote, RolloutRecord};
use std::time::Duration;

/// How often a bake looks at the new servers: what is lost between a crash and the take-back is
/// about this long.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Why a bake failed the new version.
#[derive(Debug, thiserror::Error)]
pub enum Spoiled {
    #[error("{version} on {host} (slot {slot}) exited {after} s into its bake")]
    Exited {
        version: String,
        host: String,
        slot: String,
        after: u64,
    },
    #[error("balancer {balancer} finds {}/{} DOWN {after} s into its bake: it reports {label:?}", .server.0, .server.1)]
    Down {
        balancer: String,
        server: ServerKey,
        after: u64,
        label: String,
    },
    #[error(
        "error rate {rate:.3} over {requests} requests, {after} s into its bake, is above {max}"
    )]
    ErrorRate {
        rate: f64,
        requests: u64,
        max: f64,
        after: u64,
    },
}

impl Live {
    /// The record of the rollout of `version` (see [`crate::reconcile::World::record_for`]); a
    /// fresh one takes its last good version from this plan's snapshot when no record says one.
    pub(super) async fn record_for(
        &self,
        env: &str,
        app: &str,
        version: &str,
    ) -> Result<RolloutRecord, StepError> {
        let found = self.observed.instances_of(env, app);
        let fallback = crate::plan::last_good(&self.observed, &found, env, app, version);
        Ok(self.world.record_for(env, app, version, fallback).await?)
    }

    /// Writes the record of this run's rollout (see [`crate::reconcile::World::save_rollout`]:
    /// an abort written meanwhile ends the step as the version's fault).
    pub(super) async fn save_record(&self, record: &mut RolloutRecord) -> Result<(), StepError> {
        Ok(self.world.save_rollout(record).await?)
    }

    /// The bake of `version` on `new`, `old` kept running to take the traffic back (see
    /// [`Bake`]); with `resume`, the one an earlier run recorded for these servers goes on.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn bake(
        &self,
        balancer: &str,
        env: &str,
        app: &str,
        version: &str,
        length: Duration,
        new: &[SlotRef],
        old: &[SlotRef],
        resume: bool,
    ) -> Result<(), StepError> {
        let mut record = self.record_for(env, app, version).await?;
        let servers: Vec<String> = new.iter().map(SlotRef::server).collect();
        // Traffic that moved in this run starts a bake of its own (a restart in the same slots
        // is baked again); a resumed one goes on from its record.
        let begun = record
            .bake
            .as_ref()
            .filter(|b| resume && b.servers == servers);
        if begun.is_some_and(|b| b.passed) {
            return Ok(());
        }
        if begun.is_none() {
            record.bake = Some(Bake {
                servers,
                started_at: self.world.clock().now(),
                base: self.counters(balancer, new).await?,
                passed: false,
            });
            record.phase = Phase::Progressing;
            self.save_record(&mut record).await?;
        }
        let bake = record.bake.clone().expect("set above");
        // A resumed bake waits what is left of it (the record counts whole seconds).
        let gone = self.world.clock().now().saturating_sub(bake.started_at);
        let remaining = length.saturating_sub(Duration::from_secs(gone));
        let ends = tokio::time::Instant::now() + remaining;
        tracing::info!(%env, %app, %version, remaining = %crate::desired::duration::format(remaining), "baking");
        let mut instances = Vec::new();
        for at in new {
            let found = self.world.runtime(at)?.instance(at).await?;
            instances.push(found.ok_or_else(|| Trouble::NoRecord {
                slot: at.slot.clone(),
                host: at.host.clone(),
            })?);
        }
        let analysis = self.strategy(env, app).analysis();
        let mut failing = Failing::default();
        loop {
            let now = self.world.clock().now();
            let after = now.saturating_sub(bake.started_at);
            let read = self.spoiled(balancer, version, new, &instances, &bake, after, analysis);
            let Some(spoiled) = failing
                .attempt("watching the new servers", read.await)
                .await?
            else {
                continue;
            };
            if let Some(spoiled) = spoiled {
                // A run that lost its lease meanwhile leaves the traffic to the one holding it.
                self.world.check_lease().await?;
                tracing::error!(%env, %app, %version, "{spoiled}; taking the traffic back");
                // Failed before anything else: a run killed from here on must not try it again.
                record.phase = Phase::Failed;
                record.outcome = Some(format!("bake failed: {spoiled}"));
                self.save_record(&mut record).await?;
                self.take_back(balancer, &backend_name(env, app), new, old)
                    .await;
                return Err(StepError::new(Fault::Version, spoiled));
            }
            if tokio::time::Instant::now() >= ends {
                break;
            }
            if self.world.is_interrupted() {
                return Err(StepError::new(Fault::Interrupted, super::Interrupted));
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
        if let Some(b) = record.bake.as_mut() {
            b.passed = true;
        }
        tracing::info!(%env, %app, %version, "bake passed");
        self.save_record(&mut record).await
    }

    /// What is wrong with the new servers now, if anything.
    #[allow(clippy::too_many_arguments)]
    async fn spoiled(
        &self,
        balancer: &str,
        version: &str,
        new: &[SlotRef],
        instances: &[crate::state::InstanceRecord],
        bake: &Bake,
        after: u64,
        analysis: Option<&crate::desired::Analysis>,
    ) -> Result<Option<Spoiled>, StepError> {
        // The instances and the balancer are read at once: what a crash costs is this long.
        let alive = async {
            for (at, instance) in new.iter().zip(instances) {
                if !self.world.runtime(at)?.is_alive(instance).await? {
                    return Ok(Some(at));
                }
            }
            Ok::<_, StepError>(None)
        };
        let (dead, servers) = tokio::join!(alive, self.servers(balancer));
        if let Some(at) = dead? {
            return Ok(Some(Spoiled::Exited {
                version: version.to_owned(),
                host: at.host.clone(),
                slot: at.slot.clone(),
                after,
            }));
        }
        let servers = servers?;
        for at in new {
            let server = servers.get(&at.server_key());
            if !server.is_some_and(|s| s.up) {
                return Ok(Some(Spoiled::Down {
                    balancer: balancer.to_owned(),
                    server: at.server_key(),
                    after,
                    label: server.map_or_else(|| "no such server".to_owned(), |s| s.label.clone()),
                }));
            }
        }
        let Some(a) = analysis else {
            return Ok(None);
        };
        let now = super::canary::sum_counters(&servers, new);
        let window = Window {
            requests: now.requests.saturating_sub(bake.base.requests),
            errors: now.errors.saturating_sub(bake.base.errors),
        };
        Ok(
            (rules::judge(window, a, false) == Verdict::Failed).then(|| Spoiled::ErrorRate {
                rate: window.error_rate(),
                requests: window.requests,
                max: a.max_error_rate,
                after,
            }),
        )
    }

    /// In one command: full weight back to the servers of `old` the balancer finds UP, weight 0 to
    /// `new`. Best effort: what it could not do, the cleanup after the failure does (it brings the
    /// last good version back where none is UP).
    async fn take_back(&self, balancer: &str, backend: &str, new: &[SlotRef], old: &[SlotRef]) {
        let servers = match self.servers(balancer).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot read the balancer to take the traffic back");
                return;
            }
        };
        let up: Vec<SlotRef> = old
            .iter()
            .filter(|at| {
                servers
                    .get(&at.server_key())
                    .is_some_and(|s| s.checked_up())
            })
            .cloned()
            .collect();
        if up.is_empty() {
            tracing::warn!("no old server is UP to take the traffic back; the cleanup brings the last good version back");
            return;
        }
        let weights: Vec<(ServerKey, u32)> = up
            .iter()
            .map(|at| (at.server_key(), FULL_WEIGHT))
            .chain(new.iter().map(|at| (at.server_key(), 0)))
            .collect();
        let moved = async {
            self.set_weights(balancer, &weights, &up).await?;
            self.save_state(balancer, backend).await
        };
        match moved.await {
            Ok(()) => tracing::warn!(
                servers = %up.iter().map(SlotRef::server).collect::<Vec<_>>().join(", "),
                "traffic taken back"
            ),
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "taking the traffic back failed")
            }
        }
    }

    /// Records the rollout of `version` as succeeded.
    pub(super) async fn conclude(
        &self,
        env: &str,
        app: &str,
        version: &str,
    ) -> Result<(), StepError> {
        let mut record = self.record_for(env, app, version).await?;
        record.phase = Phase::Succeeded;
        record.promote = Promote::No;
        if let Strategy::Canary { steps, .. } = self.strategy(env, app) {
            record.step = steps.len();
        }
        self.save_record(&mut record).await
    }
}
