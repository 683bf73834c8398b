//! The fake balancer: servers in the fleet's memory, health worked out from its instances, every
//! change and every broken safety rule written down.

use super::Fleet;
use crate::drivers::{Balancer, BalancerError, Change};
use crate::observed::{Admin, BalancerState, Servers};
use std::sync::Arc;

/// A fake balancer: servers in memory, health from the fleet's instances.
pub(super) struct FakeBalancer {
    pub(super) fleet: Arc<Fleet>,
    pub(super) name: String,
    pub(super) host: String,
    pub(super) config: String,
}

#[async_trait::async_trait]
impl Balancer for FakeBalancer {
    fn name(&self) -> &str {
        &self.name
    }

    fn host(&self) -> &str {
        &self.host
    }

    async fn observe(&self) -> Result<BalancerState, BalancerError> {
        let servers = self.servers().await?;
        Ok(BalancerState {
            config: self.fleet.lock().configs.get(&self.name).cloned().flatten(),
            servers,
        })
    }

    async fn servers(&self) -> Result<Servers, BalancerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        self.fleet.traffic(&mut s);
        Ok(self.fleet.report(&s, &self.name))
    }

    /// Applies the changes one by one, noting every safety rule one of them breaks.
    async fn apply(&self, changes: &[Change]) -> Result<(), BalancerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        self.fleet.traffic(&mut s);
        let serves = |servers: &Servers, backend: &str| {
            servers
                .iter()
                .any(|(k, srv)| k.0 == backend && srv.serving() && srv.checked_up())
        };
        let at_first = self.fleet.report(&s, &self.name);
        for change in changes {
            let before = self.fleet.report(&s, &self.name);
            let (key, text) = match change {
                Change::Weight(k, w) => (k, format!("weight {}/{} {w}", k.0, k.1)),
                Change::State(k, a) => (k, format!("state {}/{} {a:?}", k.0, k.1)),
            };
            let Some(current) = before.get(key) else {
                return Err(BalancerError::Refused {
                    balancer: self.name.clone(),
                    host: self.host.clone(),
                    command: text,
                    answer: "No such server.".into(),
                });
            };
            let broken = match change {
                Change::Weight(_, w) if *w > 0 && !current.checked_up() => Some(format!(
                    "{text}: weight to a server that is {}",
                    current.label
                )),
                Change::State(_, Admin::Ready)
                    if current.admin == Admin::Maint && current.weight > 0 =>
                {
                    Some(format!(
                        "{text}: left maintenance with weight {}",
                        current.weight
                    ))
                }
                _ => None,
            };
            s.violations.extend(broken);
            self.fleet.note(&mut s, text);
            let at = (self.name.clone(), key.clone());
            match change {
                Change::State(_, a) if current.admin == Admin::Maint && *a != Admin::Maint => {
                    s.enabled_at.insert(at, tokio::time::Instant::now());
                }
                Change::State(_, Admin::Drain) if current.admin != Admin::Drain => {
                    s.drained_at.insert(at, tokio::time::Instant::now());
                }
                _ => {}
            }
            let stored = s
                .servers
                .get_mut(&self.name)
                .and_then(|m| m.get_mut(key))
                .expect("reported servers are stored");
            match change {
                Change::Weight(_, w) => stored.weight = *w,
                Change::State(_, a) => stored.admin = *a,
            }
        }
        // A backend that served before the batch still has a server that serves.
        let after = self.fleet.report(&s, &self.name);
        for change in changes {
            let (Change::Weight(k, _) | Change::State(k, _)) = change;
            if serves(&at_first, &k.0) && !serves(&after, &k.0) {
                let v = format!("{}: no server serves after the batch", k.0);
                s.violations.push(v);
            }
        }
        Ok(())
    }

    fn rendered_config(&self) -> &str {
        &self.config
    }

    async fn apply_config(&self) -> Result<(), BalancerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        self.fleet.note(&mut s, format!("config {}", self.name));
        s.configs
            .insert(self.name.clone(), Some(self.config.clone()));
        Ok(())
    }

    /// Saves what a restart restores: the weight and admin state of `backend`'s servers.
    async fn save_state(&self, backend: &str) -> Result<(), BalancerError> {
        self.fleet.unreachable(&self.host)?;
        let mut s = self.fleet.lock();
        let now: Vec<(crate::names::ServerKey, (u32, Admin))> = s.servers[&self.name]
            .iter()
            .filter(|(k, _)| k.0 == backend)
            .map(|(k, srv)| (k.clone(), (srv.weight, srv.admin)))
            .collect();
        s.saved.entry(self.name.clone()).or_default().extend(now);
        self.fleet.note(&mut s, format!("save {backend}"));
        Ok(())
    }
}
