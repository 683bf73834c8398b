//! Rollout records (`rollouts/<env>/<app>.json` on the balancer host, through its ledger): read
//! (a torn or foreign record is reported and not trusted), found or begun afresh for a version,
//! and written whole, only over what was read: every write is a compare-and-swap on the
//! [`Revision`] the record was read at. A run's own write that finds the record changed (a
//! `promote` or `abort` came in between) takes the gate's word and writes again, or stops when the
//! rollout was ended ([`World::save_rollout`]); a gate reads, changes and writes again
//! ([`World::update_rollout`]).

use super::{GateError, ReconcileError, World};
use crate::drivers::files::Swap;
use crate::state::{Counters, Phase, Promote, Revision, RolloutRecord};

/// How many times a write of a rollout record that finds it changed reads it again and retries.
pub const SWAP_TRIES: usize = 5;

impl World {
    /// The rollout record of `env`/`app`, if there is one. A torn or foreign file is reported and not
    /// trusted (read as no record: the next step writes a fresh one from what it observes).
    pub async fn read_rollout(
        &self,
        env: &str,
        app: &str,
    ) -> Result<Option<RolloutRecord>, ReconcileError> {
        Ok(self.read_stored(env, app).await?.0)
    }

    /// [`World::read_rollout`], and the revision of the file as read (what a write that replaces
    /// it expects, also when it held no record that can be trusted). A record read carries it.
    pub async fn read_stored(
        &self,
        env: &str,
        app: &str,
    ) -> Result<(Option<RolloutRecord>, Revision), ReconcileError> {
        let ledger = self.ledger_of(env);
        let Some(bytes) = ledger.read_rollout(env, app).await? else {
            return Ok((None, Revision::default()));
        };
        Ok(self.decode_record(env, app, &bytes))
    }

    /// The record in `bytes`, the rollout record file of `env`/`app` as read, if it can be
    /// trusted, and the revision of the file.
    pub(super) fn decode_record(
        &self,
        env: &str,
        app: &str,
        bytes: &[u8],
    ) -> (Option<RolloutRecord>, Revision) {
        let ledger = self.ledger_of(env);
        let stored = Revision::of(Some(bytes));
        let (host, path) = (ledger.host(), ledger.rollout_file(env, app));
        let record = match serde_json::from_slice::<RolloutRecord>(bytes) {
            Ok(r) if r.env == env && r.app == app => Some(RolloutRecord {
                stored: stored.clone(),
                ..r
            }),
            Ok(_) => {
                tracing::warn!(%host, %path, "rollout record names another environment or app; ignored");
                None
            }
            Err(e) => {
                tracing::warn!(%host, %path, error = %e, "unreadable rollout record; ignored");
                None
            }
        };
        (record, stored)
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
        let (previous, stored) = self.read_stored(env, app).await?;
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
            .unwrap_or_else(|| RolloutRecord {
                stored,
                ..self.new_record(env, app, version, last_good)
            }))
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
            stored: Revision::default(),
        }
    }

    /// Writes the rollout record whole on the balancer host if the file still is what `record`
    /// was read from (`record.stored`); then `record.stored` is what was written.
    /// [`Swap::Changed`], and nothing written, when another writer came in between.
    pub async fn write_rollout(&self, record: &mut RolloutRecord) -> Result<Swap, ReconcileError> {
        let ledger = self.ledger_of(&record.env);
        let bytes = serde_json::to_vec_pretty(&RolloutRecord {
            updated_at: self.clock().now(),
            ..record.clone()
        })
        .expect("records serialize");
        let swap = ledger
            .write_rollout(&record.env, &record.app, &record.stored, &bytes)
            .await
            .map_err(|source| ReconcileError::Record {
                path: ledger.rollout_file(&record.env, &record.app),
                source,
            })?;
        if swap == Swap::Written {
            record.stored = Revision::of(Some(&bytes));
        }
        Ok(swap)
    }

    /// A run's write of the record of its rollout. When the record changed since this run read
    /// it, it is read again: a rollout of this version that was aborted (or failed in another
    /// run) meanwhile ends this run's ([`GateError::Ended`]: nothing writes over that); else the
    /// gates' word (`promote`) is taken from it and the write tried again, up to [`SWAP_TRIES`]
    /// times.
    pub async fn save_rollout(&self, record: &mut RolloutRecord) -> Result<(), ReconcileError> {
        for _ in 0..SWAP_TRIES {
            if self.write_rollout(record).await? == Swap::Written {
                return Ok(());
            }
            let (current, stored) = self.read_stored(&record.env, &record.app).await?;
            tracing::info!(env = %record.env, app = %record.app, "the rollout record changed since this run read it; reading it again");
            if let Some(c) = current.as_ref().filter(|c| c.version == record.version) {
                let ended = c.phase == Phase::Aborted
                    || (c.phase.quarantines() && c.fingerprint == record.fingerprint);
                if ended {
                    return Err(GateError::Ended {
                        version: c.version.clone(),
                        ended_as: c.phase.ended_as(),
                        outcome: c
                            .outcome
                            .clone()
                            .unwrap_or_else(|| "no reason recorded".into()),
                    }
                    .into());
                }
                record.promote = c.promote;
            }
            record.stored = stored;
        }
        Err(self.contended(&record.env, &record.app))
    }

    /// A gate's change of the record of `env`/`app`: `change` makes the new record from the one
    /// read (or refuses), and it is written over exactly that; when another writer came in
    /// between, it is read and changed again, up to [`SWAP_TRIES`] times. The record written.
    pub async fn update_rollout(
        &self,
        env: &str,
        app: &str,
        mut change: impl FnMut(Option<RolloutRecord>) -> Result<RolloutRecord, ReconcileError>,
    ) -> Result<RolloutRecord, ReconcileError> {
        for _ in 0..SWAP_TRIES {
            let (current, stored) = self.read_stored(env, app).await?;
            let mut record = RolloutRecord {
                stored,
                ..change(current)?
            };
            if self.write_rollout(&mut record).await? == Swap::Written {
                return Ok(record);
            }
            tracing::info!(%env, %app, "the rollout record changed since it was read; reading it again");
        }
        Err(self.contended(env, app))
    }

    fn contended(&self, env: &str, app: &str) -> ReconcileError {
        ReconcileError::RecordContended {
            path: self.ledger_of(env).rollout_file(env, app),
            tries: SWAP_TRIES,
        }
    }
}
