//! Steps on traffic, through the balancer driver: install the config, enable a server (weight 0
//! first, then wait until the balancer's own check finds it UP), move weights in one batch (only
//! to servers that are UP, never leaving none with weight, read back), drain a server (never the
//! last that serves) and put it in maintenance. After each runtime change the backend's state is
//! saved, so that a reload or restart of the balancer keeps it. The rules are `rules`'.

use super::{Live, Trouble};
use crate::drivers::Change;
use crate::execute::StepError;
use crate::names::{ServerKey, SlotRef};
use crate::observed::{Admin, Server, Servers, FULL_WEIGHT};
use crate::reconcile::rules;
use std::time::Duration;

/// Longest an enable waits for the balancer's check to find the new server UP.
pub(super) const UP_WITHIN: Duration = Duration::from_secs(30);

impl Live {
    /// Every server of the balancer as it reports it now.
    pub(super) async fn servers(&self, balancer: &str) -> Result<Servers, StepError> {
        Ok(self.world.balancer(balancer).servers().await?)
    }

    async fn server(&self, balancer: &str, at: &SlotRef) -> Result<Option<Server>, StepError> {
        Ok(self.servers(balancer).await?.remove(&at.server_key()))
    }

    /// Keeps the balancer's saved state in step with a runtime change.
    pub(super) async fn save_state(&self, balancer: &str, backend: &str) -> Result<(), StepError> {
        Ok(self.world.balancer(balancer).save_state(backend).await?)
    }

    pub(super) async fn apply_config(&self, balancer: &str) -> Result<(), StepError> {
        Ok(self.world.balancer(balancer).apply_config().await?)
    }

    /// Puts the server in the balancer with weight 0 and waits until the balancer's own check finds
    /// it UP.
    pub(super) async fn enable(&self, balancer: &str, at: &SlotRef) -> Result<(), StepError> {
        let key = at.server_key();
        let current = self
            .server(balancer, at)
            .await?
            .ok_or_else(|| Trouble::NoServer {
                balancer: balancer.to_owned(),
                server: key.clone(),
            })?;
        let changes = match current.admin {
            // Weight 0 first: leaving maintenance makes a server UP at once.
            Admin::Maint => vec![
                Change::Weight(key.clone(), 0),
                Change::State(key.clone(), Admin::Ready),
            ],
            // Its weight is what the balancer gives it now; only the shift changes that.
            Admin::Drain => vec![Change::State(key.clone(), Admin::Ready)],
            Admin::Ready => vec![],
        };
        self.world.balancer(balancer).apply(&changes).await?;
        // Until the balancer's own health check passed: the balancer reaches the instance.
        let until = tokio::time::Instant::now() + UP_WITHIN;
        loop {
            let now = self.server(balancer, at).await?;
            if now.as_ref().is_some_and(Server::checked_up) {
                break;
            }
            if tokio::time::Instant::now() >= until {
                return Err(Trouble::NeverUp {
                    balancer: balancer.to_owned(),
                    server: key,
                    waited: UP_WITHIN,
                    label: now.map_or_else(|| "no such server".to_owned(), |s| s.label),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.save_state(balancer, &at.backend()).await
    }

    /// In one batch: full weight to `to`, weight 0 to `from` (servers of `backend`); read back.
    pub(super) async fn shift(
        &self,
        balancer: &str,
        backend: &str,
        to: &[SlotRef],
        from: &[SlotRef],
    ) -> Result<(), StepError> {
        let weights: Vec<(ServerKey, u32)> = to
            .iter()
            .map(|r| (r.server_key(), FULL_WEIGHT))
            .chain(from.iter().map(|r| (r.server_key(), 0)))
            .collect();
        self.set_weights(balancer, &weights, to).await?;
        self.save_state(balancer, backend).await
    }

    /// Sets each server's weight in one batch (unless all are right already) and reads them back,
    /// when the rules allow it (see [`rules::check_weights`]).
    pub(super) async fn set_weights(
        &self,
        balancer: &str,
        weights: &[(ServerKey, u32)],
        must_be_up: &[SlotRef],
    ) -> Result<(), StepError> {
        let servers = self.servers(balancer).await?;
        let must_be_up: Vec<ServerKey> = must_be_up.iter().map(SlotRef::server_key).collect();
        if rules::check_weights(&servers, weights, &must_be_up)? {
            return Ok(());
        }
        let changes: Vec<Change> = weights
            .iter()
            .map(|(k, w)| Change::Weight(k.clone(), *w))
            .collect();
        self.world.balancer(balancer).apply(&changes).await?;
        rules::check_read_back(&self.servers(balancer).await?, weights)?;
        Ok(())
    }

    /// Drains the server (never the last that serves), waits for its sessions to end (bounded by
    /// the app's `drain`), then puts it in maintenance and checks that it is.
    pub(super) async fn drain(&self, balancer: &str, at: &SlotRef) -> Result<(), StepError> {
        let b = self.world.balancer(balancer);
        let key = at.server_key();
        let servers = self.servers(balancer).await?;
        rules::check_drain(&servers, &key)?;
        match servers.get(&key).map(|s| s.admin) {
            // Takes no requests: nothing to drain.
            None | Some(Admin::Maint) => return self.save_state(balancer, &at.backend()).await,
            Some(Admin::Ready) => b.apply(&[Change::State(key.clone(), Admin::Drain)]).await?,
            Some(Admin::Drain) => {}
        }
        let limit = tokio::time::Instant::now() + self.app(at).drain;
        loop {
            let sessions = self.server(balancer, at).await?.map_or(0, |s| s.sessions);
            if sessions == 0 {
                break;
            }
            if tokio::time::Instant::now() >= limit {
                tracing::warn!(backend = %key.0, server = %key.1, sessions, "drain time is up with sessions still open");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        b.apply(&[Change::State(key.clone(), Admin::Maint)]).await?;
        match self.server(balancer, at).await? {
            Some(s) if s.admin == Admin::Maint => self.save_state(balancer, &at.backend()).await,
            other => Err(Trouble::NotInMaint {
                server: key,
                label: other.map(|s| s.label),
            }
            .into()),
        }
    }
}
