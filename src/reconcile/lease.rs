//! The lease of a run, on every host it may change (the balancer hosts in use, and the app hosts:
//! what a run changes is locked, so two runs whose environments moved to other balancers, or two
//! repositories that share app hosts, never act on the same slots): taken before anything changes
//! (waiting up to `--lock-wait` for another run's, while renewing the ones already taken), renewed
//! by a heartbeat, checked before every step that changes something, and on an app host by the
//! changing command itself (fencing: a run that lost it changes nothing more), and given back at
//! the end. [`leased`] wraps work in all of that, and stops the work at once when a renewal finds
//! the lease lost (or cannot renew it for half its time).

use super::{ReconcileError, World};
use crate::drivers::lease::Answer;
use crate::drivers::ledger::LeaseOp;
use crate::drivers::LedgerError;
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
    #[error("not renewed for {secs} s (half of --lease-ttl); this run changes nothing more")]
    NotRenewed {
        secs: u64,
        #[source]
        cause: Box<ReconcileError>,
    },
}

/// How long an app host has to answer a renewal before the heartbeat goes on without it.
const APP_HOST_ANSWER: Duration = Duration::from_secs(3);

/// How long a run that found the lease held somewhere while taking it on every host at once
/// waits at least for a host held (by a run that may be giving back what it took).
const CONTENDED: Duration = Duration::from_secs(1);

/// The shortest `--lease-ttl`: renewals come every quarter of it, each a round trip to every
/// host leased (over SSH), and a run stops when none succeeded for half of it.
pub const MIN_TTL: Duration = Duration::from_secs(5);

/// Runs `work` under the lease: takes it (waiting up to `wait`), renews it every quarter of `ttl`
/// while `work` runs, and gives it back after.
///
/// When the heartbeat finds the lease lost (or could not renew it for half of `ttl`), the run
/// stops at once, as on SIGTERM: no new step starts and a pause ends ([`World::interrupt`]); the
/// steps in flight get one renewal period (`ttl / 4`) to end by themselves, then they are dropped
/// (a remote command in flight is ended with its connection; every step is idempotent, and the run
/// that holds the lease now observes afresh). The error is the [`ReconcileError::LeaseLost`].
pub async fn leased<T>(
    world: &Arc<World>,
    wait: Duration,
    ttl: Duration,
    work: impl std::future::Future<Output = Result<T, ReconcileError>>,
) -> Result<T, ReconcileError> {
    world.acquire_lease(wait, ttl).await?;
    let mut heartbeat = world.heartbeat(ttl);
    tokio::pin!(work);
    let result = tokio::select! {
        result = &mut work => result,
        lost = &mut heartbeat => {
            let lost = lost.unwrap_or_else(|e| panic!("the heartbeat panicked: {e}"));
            tracing::error!(error = %crate::error::chain(&lost), "the lease is lost: this run stops now");
            world.interrupt();
            if tokio::time::timeout(ttl / 4, &mut work).await.is_err() {
                tracing::warn!("the steps in flight did not end within a renewal period; dropped");
            }
            Err(lost)
        }
    };
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
    /// Takes the lease on every host that has a ledger (the balancer hosts in use and, with real
    /// drivers, the app hosts), waiting up to `wait` for another run's to end or expire. Fails with [`ReconcileError::Locked`] (having released what it took).
    pub async fn acquire_lease(&self, wait: Duration, ttl: Duration) -> Result<(), ReconcileError> {
        let me = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|h| h.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let mut until = tokio::time::Instant::now() + wait;
        let mut renewed = tokio::time::Instant::now();
        let op = LeaseOp::Acquire {
            run_id: self.run_id.clone(),
            ttl_secs: lease_secs(ttl),
            holder_host: me,
            pid: std::process::id(),
        };
        if self.take_at_once(&op).await? {
            return Ok(());
        }
        // Another run may have been taking it at once too, and be giving back what it took:
        // a host it held is asked again for a moment, whatever `wait`.
        until = until.max(tokio::time::Instant::now() + CONTENDED);
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
                        // The leases taken already are kept while this one is waited for.
                        if renewed.elapsed() >= ttl / 4 {
                            if let Err(e) = self.renew_lease(ttl).await {
                                self.release_lease().await;
                                return Err(e);
                            }
                            renewed = tokio::time::Instant::now();
                        }
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

    /// Asks for the lease on every host at once (`--parallel` at a time): whether it was had on
    /// all of them. When another run holds it somewhere, what was taken is given back, for the
    /// lease to be taken host by host in the one order that never deadlocks; an error is
    /// returned after giving it back too.
    async fn take_at_once(&self, op: &LeaseOp) -> Result<bool, ReconcileError> {
        let mut all = true;
        let mut failed = None;
        let hosts = self.drivers.ledgers.keys().cloned().collect();
        for (host, answer) in self.ask_at_once(hosts, op).await {
            match answer {
                Ok(Answer::Held { epoch, .. }) => {
                    tracing::info!(%host, epoch, run = %self.run_id, "lease taken");
                    if let Some(fence) = self.drivers.fences.get(&host) {
                        fence.set(&self.run_id, epoch);
                    }
                    self.leases
                        .lock()
                        .expect("not poisoned")
                        .push((host, epoch));
                }
                Ok(_) => all = false,
                Err(e) => {
                    all = false;
                    failed.get_or_insert(e);
                }
            }
        }
        if !all {
            self.release_lease().await;
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(all),
        }
    }

    /// Extends every lease this run holds by `ttl`; a lease that was lost is an error, and so is a
    /// balancer host that does not answer. An app host that does not answer is only logged: its
    /// changes check the lease themselves ([`crate::drivers::fenced`]), a step there fails on its
    /// own as unreachable, and the run goes on where it can.
    pub async fn renew_lease(&self, ttl: Duration) -> Result<(), ReconcileError> {
        self.confirm_leases(
            |epoch| LeaseOp::Renew {
                run_id: self.run_id.clone(),
                ttl_secs: lease_secs(ttl),
                epoch,
            },
            false,
        )
        .await
    }

    /// Renews the leases this run holds every quarter of `ttl` until the returned task is aborted;
    /// it ends only when the lease is lost: a renewal answered that another run holds it (or that it
    /// expired), or renewals failed (the balancer host did not answer; tried again every second)
    /// for half of `ttl`, well before it could expire. What it ends with is why.
    pub fn heartbeat(self: &Arc<Self>, ttl: Duration) -> tokio::task::JoinHandle<ReconcileError> {
        let world = self.clone();
        tokio::spawn(async move {
            let mut renewed = tokio::time::Instant::now();
            let mut every = ttl / 4;
            loop {
                tokio::time::sleep(every).await;
                match world.renew_lease(ttl).await {
                    Ok(()) => (renewed, every) = (tokio::time::Instant::now(), ttl / 4),
                    Err(e @ ReconcileError::LeaseLost { .. }) => return e,
                    Err(e) if renewed.elapsed() + Duration::from_secs(1) > ttl / 2 => {
                        let hosts: Vec<&str> = world.balancer_hosts().into_iter().collect();
                        return ReconcileError::LeaseLost {
                            host: hosts.join(", "),
                            loss: LeaseLoss::NotRenewed {
                                secs: renewed.elapsed().as_secs(),
                                cause: Box::new(e),
                            },
                        };
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error::chain(&e), "lease not renewed; trying again in a second");
                        every = Duration::from_secs(1).min(ttl / 4);
                    }
                }
            }
        })
    }

    /// Fencing: whether this run still holds the lease it took on every balancer host, at the
    /// epoch it took it (an app host's changes check it there, in the same command).
    pub async fn check_lease(&self) -> Result<(), ReconcileError> {
        self.confirm_leases(
            |epoch| LeaseOp::Check {
                run_id: self.run_id.clone(),
                epoch,
            },
            true,
        )
        .await
    }

    /// Runs `op(epoch)` on every lease this run holds (with `balancers_only`, on the balancer
    /// hosts'); anything but "held" is an error that says who holds it now. An app host that does
    /// not answer is logged and passed over.
    async fn confirm_leases(
        &self,
        op: impl Fn(u64) -> LeaseOp,
        balancers_only: bool,
    ) -> Result<(), ReconcileError> {
        let held = self.leases.lock().expect("not poisoned").clone();
        let balancer_hosts = self.balancer_hosts();
        // Every host at once, so that one slow to answer delays no other's renewal; an app host
        // gets APP_HOST_ANSWER to answer.
        let mut asked = tokio::task::JoinSet::new();
        for (i, (host, epoch)) in held.into_iter().enumerate() {
            let balancer = balancer_hosts.contains(host.as_str());
            if balancers_only && !balancer {
                continue;
            }
            let ledger = self.drivers.ledgers[&host].clone();
            let op = op(epoch);
            asked.spawn(async move {
                let answer = if balancer {
                    Some(ledger.lease(&op).await)
                } else {
                    tokio::time::timeout(APP_HOST_ANSWER, ledger.lease(&op))
                        .await
                        .ok()
                };
                (i, host, balancer, answer)
            });
        }
        let mut answers = asked.join_all().await;
        answers.sort_by_key(|(i, ..)| *i);
        for (_, host, balancer, answer) in answers {
            let answer = match answer {
                Some(Ok(answer)) => answer,
                Some(Err(e)) if !balancer && e.lost_contact() => {
                    tracing::warn!(%host, error = %crate::error::chain(&e), "the lease on an app host was not renewed; its changes check it themselves");
                    continue;
                }
                None => {
                    tracing::warn!(%host, "the lease on an app host was not renewed in time; its changes check it themselves");
                    continue;
                }
                Some(Err(e)) => return Err(e.into()),
            };
            let loss = match answer {
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
        let mut hosts = Vec::new();
        for (host, _) in held {
            if let Some(fence) = self.drivers.fences.get(&host) {
                fence.clear();
            }
            hosts.push(host);
        }
        for (host, given) in self.ask_at_once(hosts, &op).await {
            if let Err(e) = given {
                tracing::warn!(%host, error = %crate::error::chain(&e), "lease not released; it expires by itself");
            }
        }
    }

    /// `op` on the lease of every one of `hosts` at once, `--parallel` at a time: each host's
    /// answer, in the order of `hosts`.
    async fn ask_at_once(
        &self,
        hosts: Vec<String>,
        op: &LeaseOp,
    ) -> Vec<(String, Result<Answer, LedgerError>)> {
        let gate = Arc::new(tokio::sync::Semaphore::new(self.parallel));
        let asked: Vec<_> = hosts
            .into_iter()
            .map(|host| {
                let (ledger, op) = (self.drivers.ledgers[&host].clone(), op.clone());
                super::world::spawn_gated(&gate, async move { (host, ledger.lease(&op).await) })
            })
            .collect();
        let mut answers = Vec::new();
        for asked in asked {
            answers.push(asked.await.expect("a lease request does not panic"));
        }
        answers
    }
}
