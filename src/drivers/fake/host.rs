//! A fake host: whether it can be reached, and its runtime and ledger, on the fleet's instances,
//! records and leases.

use super::{FakeInstance, Fleet};
use crate::drivers::files::Swap;
use crate::drivers::lease::{Answer, Holder};
use crate::drivers::ledger::LeaseOp;
use crate::drivers::runtime::{Found, Running, StartSpec};
use crate::drivers::{Cmd, Output, Transport};
use crate::drivers::{Ledger, LedgerError, Runtime, RuntimeError, TransportError};
use crate::names::SlotRef;
use crate::observed::Admin;
use crate::reconcile::Clock;
use crate::state::{InstanceRecord, Revision, RolloutRecord};
use std::sync::Arc;
use std::time::Duration;

/// A fake host: its reachability, its runtime and (for a balancer host) its ledger.
pub(super) struct FakeHost {
    pub(super) fleet: Arc<Fleet>,
    pub(super) host: String,
}

#[async_trait::async_trait]
impl Transport for FakeHost {
    fn host(&self) -> &str {
        &self.host
    }

    /// Only answers whether the host is there (the reconciler's `true`).
    async fn run(&self, cmd: &Cmd, _timeout: Duration) -> Result<Output, TransportError> {
        self.fleet.unreachable(&self.host)?;
        Ok(Output {
            status: Some(if cmd.argv == ["true"] { 0 } else { 127 }),
            ..Output::default()
        })
    }

    /// Streams nothing: every command is unknown (127).
    async fn stream(
        &self,
        _cmd: &Cmd,
        _to: tokio::sync::mpsc::Sender<crate::drivers::Line>,
    ) -> Result<Option<i32>, TransportError> {
        self.fleet.unreachable(&self.host)?;
        Ok(Some(127))
    }

    async fn connect_unix(&self, path: &str) -> Result<tokio::net::UnixStream, TransportError> {
        Err(TransportError::Process {
            host: self.host.clone(),
            message: format!("a fake host has no socket {path}"),
        })
    }
}

#[async_trait::async_trait]
impl Runtime for FakeHost {
    fn host(&self) -> &str {
        &self.host
    }

    async fn instances(&self) -> Result<Vec<Found>, RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        self.fleet.observing().await;
        Ok(self
            .fleet
            .lock()
            .instances
            .iter()
            .filter(|(at, _)| at.host == self.host)
            .map(|(_, i)| Found::Record {
                record: i.record.clone(),
                alive: i.alive,
            })
            .collect())
    }

    async fn instance(&self, at: &SlotRef) -> Result<Option<InstanceRecord>, RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        Ok(self
            .fleet
            .lock()
            .instances
            .get(at)
            .map(|i| i.record.clone()))
    }

    async fn is_alive(&self, record: &InstanceRecord) -> Result<bool, RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        Ok(self
            .fleet
            .lock()
            .instances
            .values()
            .any(|i| i.record.pid == record.pid && i.alive))
    }

    async fn recover(&self, _at: &SlotRef) -> Result<Option<Running>, RuntimeError> {
        Ok(None)
    }

    async fn write_record(&self, _record: &InstanceRecord) -> Result<(), RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        Ok(())
    }

    async fn start(&self, spec: &StartSpec) -> Result<InstanceRecord, RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        let entry = format!(
            "start {} {} in {}",
            spec.version, spec.at.host, spec.at.slot
        );
        self.fleet.note(&mut s, entry);
        if s.blip_on_start.remove(&self.host) {
            return Err(TransportError::Unreachable {
                host: self.host.clone(),
                message: "the connection dropped".into(),
            }
            .into());
        }
        if s.lost_on_start.contains(&self.host) {
            s.down.insert(self.host.clone());
            return Err(TransportError::Unreachable {
                host: self.host.clone(),
                message: "the fake host went down".into(),
            }
            .into());
        }
        if Fleet::behaviour(&s, &spec.at.host, &spec.version).exits_at_once {
            return Err(RuntimeError::ExitedAtOnce {
                host: self.host.clone(),
                command: spec.launch.command.join(" "),
                log: "fake.log".into(),
                tail: "boom".into(),
            });
        }
        s.next_pid += 1;
        let record = InstanceRecord {
            revision: spec.revision.clone(),
            spec: Some(spec.spec.clone()),
            ..self.fleet.record(&spec.at, &spec.version, s.next_pid)
        };
        if let Some(after) = Fleet::behaviour(&s, &spec.at.host, &spec.version).exits_after {
            let (fleet, pid) = (self.fleet.clone(), record.pid);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let mut s = fleet.lock();
                if let Some(i) = s.instances.values_mut().find(|i| i.record.pid == pid) {
                    i.alive = false;
                }
            });
        }
        s.instances.insert(
            spec.at.clone(),
            FakeInstance {
                record: record.clone(),
                alive: true,
            },
        );
        Ok(record)
    }

    async fn stop(
        &self,
        record: &InstanceRecord,
        _stop_timeout: Duration,
    ) -> Result<(), RuntimeError> {
        self.fleet.unreachable(&self.host)?;
        let at = SlotRef::new(&record.env, &record.app, &self.host, &record.slot);
        let balancer = self.fleet.desired.balancer_of(&record.env).name.clone();
        let mut s = self.fleet.lock();
        let entry = format!("stop {} {} in {}", record.version, self.host, record.slot);
        self.fleet.note(&mut s, entry);
        if let Some(srv) = s
            .servers
            .get(&balancer)
            .and_then(|m| m.get(&at.server_key()))
        {
            if srv.admin != Admin::Maint && srv.weight > 0 {
                let v = format!(
                    "{} stopped while the balancer could send it requests",
                    at.server()
                );
                s.violations.push(v);
            }
        }
        if s.instances
            .get(&at)
            .is_some_and(|i| i.record.pid == record.pid)
        {
            s.instances.remove(&at);
        }
        Ok(())
    }

    async fn logs(&self, _at: &SlotRef, _lines: u32) -> Result<(String, String), RuntimeError> {
        Ok(("fake.log".into(), String::new()))
    }

    fn logs_cmd(&self, at: &SlotRef, lines: u32, follow: bool) -> (String, Cmd) {
        let (log, cmd) = ("fake.log".to_owned(), lines.to_string());
        let mut argv = vec!["fake-logs", at.slot.as_str(), cmd.as_str()];
        if follow {
            argv.push("--follow");
        }
        (log, Cmd::read(argv))
    }
}

#[async_trait::async_trait]
impl Ledger for FakeHost {
    fn host(&self) -> &str {
        &self.host
    }

    fn rollout_file(&self, env: &str, app: &str) -> String {
        format!("rollouts/{env}/{app}.json")
    }

    async fn read_rollout(&self, env: &str, app: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        self.fleet.unreachable(&self.host)?;
        let s = self.fleet.lock();
        Ok(s.records.get(&(env.to_owned(), app.to_owned())).cloned())
    }

    async fn rollouts(&self) -> Result<crate::drivers::ledger::Rollouts, LedgerError> {
        self.fleet.unreachable(&self.host)?;
        let s = self.fleet.lock();
        let mut envs: Vec<String> = s.records.keys().map(|(env, _)| env.clone()).collect();
        envs.dedup();
        Ok(crate::drivers::ledger::Rollouts {
            envs,
            records: s.records.clone(),
        })
    }

    /// Compare-and-swap as the host's does, after another writer's change that
    /// [`Fleet::meanwhile`] set up for this write.
    async fn write_rollout(
        &self,
        env: &str,
        app: &str,
        expected: &Revision,
        bytes: &[u8],
    ) -> Result<Swap, LedgerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        let key = (env.to_owned(), app.to_owned());
        let new: Option<RolloutRecord> = serde_json::from_slice(bytes).ok();
        if s.meanwhile
            .as_ref()
            .is_some_and(|(when, _)| new.as_ref().is_some_and(when))
        {
            let (_, change) = s.meanwhile.take().expect("checked");
            let stored = s.records.get(&key).expect("a record to change");
            let mut other: RolloutRecord = serde_json::from_slice(stored).expect("a record");
            change(&mut other);
            let bytes = serde_json::to_vec_pretty(&other).expect("records serialize");
            s.records.insert(key.clone(), bytes);
        }
        if Revision::of(s.records.get(&key).map(Vec::as_slice)) != *expected {
            return Ok(Swap::Changed);
        }
        s.records.insert(key, bytes.to_vec());
        Ok(Swap::Written)
    }

    fn suspensions_file(&self) -> String {
        "suspensions.json".into()
    }

    async fn read_suspensions(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        self.fleet.unreachable(&self.host)?;
        Ok(self.fleet.lock().suspensions.get(&self.host).cloned())
    }

    async fn write_suspensions(&self, bytes: &[u8]) -> Result<(), LedgerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        s.suspensions.insert(self.host.clone(), bytes.to_vec());
        Ok(())
    }

    fn applied_file(&self) -> String {
        "applied.json".into()
    }

    async fn read_applied(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        self.fleet.unreachable(&self.host)?;
        Ok(self.fleet.lock().applied.get(&self.host).cloned())
    }

    async fn write_applied(&self, bytes: &[u8]) -> Result<(), LedgerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        s.applied.insert(self.host.clone(), bytes.to_vec());
        Ok(())
    }

    fn audit_file(&self) -> String {
        "audit.log".into()
    }

    async fn append_audit(&self, line: &str) -> Result<(), LedgerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        let log = s.audit.entry(self.host.clone()).or_default();
        log.extend_from_slice(line.as_bytes());
        log.push(b'\n');
        Ok(())
    }

    async fn read_audit(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        self.fleet.unreachable(&self.host)?;
        Ok(self.fleet.lock().audit.get(&self.host).cloned())
    }

    async fn lease(&self, op: &LeaseOp) -> Result<Answer, LedgerError> {
        self.fleet.unreachable(&self.host)?;
        let now = self.fleet.now();
        let mut s = self.fleet.lock();
        let current = s.leases.get(&self.host).cloned();
        let holder = |(epoch, expires, run): &(u64, u64, String)| Holder {
            epoch: *epoch,
            expires: *expires,
            run_id: run.clone(),
            host: "fake".into(),
            pid: 1,
        };
        let held_by = |run_id: &str, epoch: Option<u64>| {
            current.as_ref().is_some_and(|(e, expires, run)| {
                run == run_id && *expires > now && epoch.is_none_or(|want| want == *e)
            })
        };
        Ok(match op {
            LeaseOp::Acquire {
                run_id, ttl_secs, ..
            } => match &current {
                Some(c) if c.2 != *run_id && c.1 > now => Answer::Taken {
                    holder: holder(c),
                    now,
                },
                _ => {
                    let epoch = match &current {
                        Some((e, _, run)) if run == run_id => *e,
                        Some((e, _, _)) => e + 1,
                        None => 1,
                    };
                    let expires = now + ttl_secs;
                    s.leases
                        .insert(self.host.clone(), (epoch, expires, run_id.clone()));
                    Answer::Held { epoch, expires }
                }
            },
            LeaseOp::Renew {
                run_id,
                ttl_secs,
                epoch,
            } if held_by(run_id, Some(*epoch)) => {
                let expires = now + ttl_secs;
                s.leases
                    .insert(self.host.clone(), (*epoch, expires, run_id.clone()));
                Answer::Held {
                    epoch: *epoch,
                    expires,
                }
            }
            LeaseOp::Check { run_id, epoch } if held_by(run_id, Some(*epoch)) => {
                let (e, expires, _) = current.expect("held");
                Answer::Held { epoch: e, expires }
            }
            LeaseOp::Renew { .. } | LeaseOp::Check { .. } => Answer::Lost {
                holder: current.as_ref().map(holder),
            },
            LeaseOp::Release { run_id } => {
                if current.as_ref().is_some_and(|c| c.2 == *run_id) {
                    s.leases.remove(&self.host);
                }
                Answer::Released
            }
        })
    }
}
