//! Observed state: a snapshot of what runs where — the instances on each host (from their instance
//! files, with liveness and readiness) and each balancer's servers and config. Filled only by
//! `observe` through the drivers; the planner reads it and nothing else.

use crate::drivers::haproxy::Servers;
use crate::state::{InstanceRecord, RolloutRecord};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ObservedState {
    pub hosts: BTreeMap<String, HostState>,
    pub balancers: BTreeMap<String, BalancerState>,
    /// Rollout records by (env, app), from the balancer hosts.
    pub rollouts: BTreeMap<(String, String), RolloutRecord>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HostState {
    /// Instances by (env, app, slot).
    pub instances: BTreeMap<(String, String, String), Instance>,
    /// Instance files that could not be read (torn or edited), by path, with the reason.
    pub unreadable: BTreeMap<String, String>,
    /// Instances (env, app, slot) whose file could not be read, rebuilt from what runs: the process
    /// the slot's pid file names, its version told by its command line (else
    /// [`crate::state::UNKNOWN_VERSION`]).
    pub recovered: Vec<(String, String, String)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Instance {
    pub record: InstanceRecord,
    /// The recorded process is running (and is the one that was started).
    pub alive: bool,
    /// Its readiness probe answered; `None` when not probed (not alive).
    pub ready: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BalancerState {
    /// The config file kube-free owns, as it is on the balancer host.
    pub config: Option<String>,
    /// Every server HAProxy knows, by (backend, server).
    #[serde(serialize_with = "serialize_servers")]
    pub servers: Servers,
}

fn serialize_servers<S: serde::Serializer>(servers: &Servers, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(servers.len()))?;
    for ((backend, server), stat) in servers {
        map.serialize_entry(&format!("{backend}/{server}"), stat)?;
    }
    map.end()
}

impl ObservedState {
    pub fn rollout(&self, env: &str, app: &str) -> Option<&RolloutRecord> {
        self.rollouts.get(&(env.to_owned(), app.to_owned()))
    }

    pub fn instance(&self, host: &str, env: &str, app: &str, slot: &str) -> Option<&Instance> {
        self.hosts
            .get(host)?
            .instances
            .get(&(env.to_owned(), app.to_owned(), slot.to_owned()))
    }

    pub fn server(
        &self,
        balancer: &str,
        backend: &str,
        server: &str,
    ) -> Option<&crate::drivers::haproxy::ServerStat> {
        self.balancers
            .get(balancer)?
            .servers
            .get(&(backend.to_owned(), server.to_owned()))
    }
}
