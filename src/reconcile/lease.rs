//! The lease of a run, on every host it may change (the balancer hosts in use, and the app hosts:
//! what a run changes is locked, so two runs whose environments moved to other balancers, or two
//! repositories that share app hosts, never act on the same slots): taken before anything changes
//! (waiting up to `--lock-wait` for another run's), renewed by a heartbeat, checked before every
//! step that changes something, and on an app host by the changing command itself (fencing: a run
//! that lost it changes nothing more), and given back at the end.
//! [`leased`] wraps work in all of that.

use super::{ReconcileError, World};
use crate::drivers::lease::Answer;
use crate::drivers::ledger::LeaseOp;
use std::sync::Arc;
use std::time::Duration;

/// How a run lost its lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseLoss {
    #[error("lost: it expired (this run was stalled for longer than --lease-ttl); this run changes nothing more")]
    Expired,
    #[error("lost: now held by {0}; this run changes nothing more")]
    TakenBy(crate::drivers::lease::Holder),
    #[error("lost (expired); this run changes nothing more")]
    Gone,
    #[error("unexpected answer {0:?}")]
    Unexpected(Answer),
}

/// Runs `work` under the lease: takes it (waiting up to `wait`), renews it every quarter of `ttl`
/// while `work` runs, and gives it back after.
pub async fn leased<T>(
    world: &Arc<World>,
    wait: Duration,
    ttl: Duration,
    work: impl std::future::Future<Output = Result<T, ReconcileError>>,
) -> Result<T, ReconcileError> {
    world.acquire_lease(wait, ttl).await?;
    let heartbeat = world.heartbeat(ttl);
    let result = work.await;
    heartbeat.abort();
    world.release_lease().await;
    result
}

/// Seconds to ask the balancer host for: the host's clock counts whole seconds, so one more makes the
/// lease last at least `ttl`.
fn lease_secs(ttl: Duration) -> u64 {
    ttl.as_secs_f64().ceil() as u64 + 1
}

impl World {
    /// Takes the lease on every balancer host in use, waiting up to `wait` for another run's to
    /// end or expire. Fails with [`ReconcileError::Locked`] (having released what it took).
    pub async fn acquire_lease(&self, wait: Duration, ttl: Duration) -> Result<(), ReconcileError> {
        let me = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|h| h.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let until = tokio::time::Instant::now() + wait;
        let op = LeaseOp::Acquire {
            run_id: self.run_id.clone(),
            ttl_secs: lease_secs(ttl),
            holder_host: me,
            pid: std::process::id(),
        };
        // In one order for every run (by name), so that two runs never wait for each other.
        for (host, ledger) in &self.drivers.ledgers {
            let host = host.as_str();
            let ledger = ledger.as_ref();
            loop {
                let answer = match ledger.lease(&op).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        self.release_lease().await;
                        return Err(e.into());
                    }
                };
                match answer {
                    Answer::Held { epoch, .. } => {
                        tracing::info!(%host, epoch, run = %self.run_id, "lease taken");
                        if let Some(fence) = self.drivers.fences.get(host) {
                            fence.set(&self.run_id, epoch);
                        }
                        self.leases
                            .lock()
                            .expect("not poisoned")
                            .push((host.to_owned(), epoch));
                        break;
                    }
                    Answer::Taken { holder, now } if tokio::time::Instant::now() >= until => {
                        self.release_lease().await;
                        return Err(ReconcileError::Locked {
                            host: host.to_owned(),
                            expires_in: holder.expires.saturating_sub(now),
                            holder,
                        });
                    }
                    Answer::Taken { holder, .. } => {
                        tracing::info!(%host, %holder, "waiting for the lease");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    other => {
                        self.release_lease().await;
                        return Err(ReconcileError::LeaseLost {
                            host: host.to_owned(),
                            loss: LeaseLoss::Unexpected(other),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Extends every lease this run holds by `ttl`; a lease that was lost is an error.
    pub async fn renew_lease(&self, ttl: Duration) -> Result<(), ReconcileError> {
        self.confirm_leases(|epoch| LeaseOp::Renew {
            run_id: self.run_id.clone(),
            ttl_secs: lease_secs(ttl),
            epoch,
        })
        .await
    }

    /// Renews the leases this run holds every quarter of `ttl` until the returned task is aborted.
    /// A renewal that fails is logged; the next step's fencing check stops the run.
    pub fn heartbeat(self: &Arc<Self>, ttl: Duration) -> tokio::task::JoinHandle<()> {
        let world = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 4).await;
                if let Err(e) = world.renew_lease(ttl).await {
                    tracing::error!(error = %crate::error::chain(&e), "lease not renewed");
                }
            }
        })
    }

    /// Fencing: whether this run still holds every lease it took, at the epoch it took it.
    pub async fn check_lease(&self) -> Result<(), ReconcileError> {
        self.confirm_leases(|epoch| LeaseOp::Check {
            run_id: self.run_id.clone(),
            epoch,
        })
        .await
    }

    /// Runs `op(epoch)` on every lease this run holds; anything but "held" is an error that says
    /// who holds it now.
    async fn confirm_leases(&self, op: impl Fn(u64) -> LeaseOp) -> Result<(), ReconcileError> {
        let held = self.leases.lock().expect("not poisoned").clone();
        for (host, epoch) in held {
            let loss = match self.drivers.ledgers[&host].lease(&op(epoch)).await? {
                Answer::Held { .. } => continue,
                Answer::Lost { holder: Some(h) } if h.run_id == self.run_id => LeaseLoss::Expired,
                Answer::Lost { holder: Some(h) } => LeaseLoss::TakenBy(h),
                Answer::Lost { holder: None } => LeaseLoss::Gone,
                other => LeaseLoss::Unexpected(other),
            };
            return Err(ReconcileError::LeaseLost { host, loss });
        }
        Ok(())
    }

    /// Gives back every lease this run holds (errors are logged: an unreleased lease expires).
    pub async fn release_lease(&self) {
        let held = std::mem::take(&mut *self.leases.lock().expect("not poisoned"));
        let op = LeaseOp::Release {
            run_id: self.run_id.clone(),
        };
        for (host, _) in held {
            if let Some(fence) = self.drivers.fences.get(&host) {
                fence.clear();
            }
            if let Err(e) = self.drivers.ledgers[&host].lease(&op).await {
                tracing::warn!(%host, error = %crate::error::chain(&e), "lease not released; it expires by itself");
            }
        }
    }
}
