//! Rollout records (`rollouts/<env>/<app>.json` on the balancer host, through its ledger): read
//! (a torn or foreign record is reported and not trusted), found or begun afresh for a version,
//! and written whole.

use super::{GateError, ReconcileError, World};
use crate::state::{Counters, Phase, Promote, RolloutRecord};

impl World {
    /// The rollout record of `env`/`app`, if there is one. A torn or foreign file is reported and not
    /// trusted (read as no record: the next step writes a fresh one from what it observes).
    pub async fn read_rollout(
        &self,
        env: &str,
        app: &str,
    ) -> Result<Option<RolloutRecord>, ReconcileError> {
        let ledger = self.ledger_of(env);
        let Some(bytes) = ledger.read_rollout(env, app).await? else {
            return Ok(None);
        };
        let (host, path) = (ledger.host(), ledger.rollout_file(env, app));
        match serde_json::from_slice::<RolloutRecord>(&bytes) {
            Ok(r) if r.env == env && r.app == app => Ok(Some(r)),
            Ok(_) => {
                tracing::warn!(%host, %path, "rollout record names another environment or app; ignored");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(%host, %path, error = %e, "unreadable rollout record; ignored");
                Ok(None)
            }
        }
    }

    /// The record of the rollout of `version`, or a fresh one when there is none for it (another
    /// version, an earlier desired state, or one that succeeded); a fresh one keeps the last good
    /// version the record before it knew (else `fallback`, what serves now). A rollout that was
    /// aborted or rolled back meanwhile (by `kube-free abort`, or by another run) is an error:
    /// nothing may write over that.
    pub async fn record_for(
        &self,
        env: &str,
        app: &str,
        version: &str,
        fallback: Option<String>,
    ) -> Result<RolloutRecord, ReconcileError> {
        let fingerprint = self.desired.fingerprint(env, app);
        let previous = self.read_rollout(env, app).await?;
        let last_good = previous
            .as_ref()
            .and_then(|p| p.good_before(version))
            .map(str::to_owned)
            .or(fallback);
        let current = previous.filter(|r| r.version == version && r.fingerprint == fingerprint);
        if let Some(ended) = current.as_ref().filter(|r| r.phase.quarantines()) {
            return Err(GateError::Ended {
                version: version.to_owned(),
                ended_as: ended.phase.ended_as(),
                outcome: ended
                    .outcome
                    .clone()
                    .unwrap_or_else(|| "no reason recorded".into()),
            }
            .into());
        }
        Ok(current
            .filter(|r| matches!(r.phase, Phase::Progressing | Phase::Paused))
            .unwrap_or_else(|| self.new_record(env, app, version, last_good)))
    }

    /// A record of a rollout of `version` that starts now, after `last_good`.
    pub fn new_record(
        &self,
        env: &str,
        app: &str,
        version: &str,
        last_good: Option<String>,
    ) -> RolloutRecord {
        let strategy = self.desired.deployed(env, app).strategy.name();
        let now = self.clock().now();
        RolloutRecord {
            env: env.to_owned(),
            app: app.to_owned(),
            version: version.to_owned(),
            revision: self.revision.clone(),
            fingerprint: self.desired.fingerprint(env, app),
            strategy: strategy.to_owned(),
            phase: Phase::Progressing,
            step: 0,
            step_started_at: now,
            step_base: Counters::default(),
            started_at: now,
            updated_at: 0,
            promote: Promote::No,
            analysis: Vec::new(),
            outcome: None,
            last_good,
            bake: None,
        }
    }

    /// Writes the rollout record whole on the balancer host.
    pub async fn write_rollout(&self, record: &RolloutRecord) -> Result<(), ReconcileError> {
        let ledger = self.ledger_of(&record.env);
        let mut record = record.clone();
        record.updated_at = self.clock().now();
        let bytes = serde_json::to_vec_pretty(&record).expect("records serialize");
        ledger
            .write_rollout(&record.env, &record.app, &bytes)
            .await
            .map_err(|source| ReconcileError::Record {
                path: ledger.rollout_file(&record.env, &record.app),
                source,
            })
    }
}
