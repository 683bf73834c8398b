//! Observed state: a snapshot of what runs where — the instances on each host (from their instance
//! records, with liveness and readiness), each balancer's servers and config, and the rollout
//! records. Filled only by observation through the drivers; the planner reads it and nothing else.
//! A balancer is described here in neutral terms — backends and servers with a weight, an admin
//! state, the balancer's own check verdict, sessions and counters — which each driver translates
//! its product's answers into. No driver is named or imported here.

use crate::names::ServerKey;
use crate::state::{InstanceRecord, RolloutRecord};
use serde::Serialize;
use std::collections::BTreeMap;

/// Weight of a server that takes its full share: weights go from 0 to this.
pub const FULL_WEIGHT: u32 = 100;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ObservedState {
    pub hosts: BTreeMap<String, HostState>,
    pub balancers: BTreeMap<String, BalancerState>,
    /// Rollout records by (env, app), from the balancer hosts.
    pub rollouts: BTreeMap<(String, String), RolloutRecord>,
    /// The environments with rollout records on the balancer hosts reached, in the desired state
    /// or not: those rolled out through these balancers (an instance of one the desired state no
    /// longer has is an orphan; of any other, another desired state's).
    pub rolled_out_envs: std::collections::BTreeSet<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HostState {
    /// Instances by (env, app, slot).
    pub instances: BTreeMap<(String, String, String), Instance>,
    /// Instance records that could not be read (torn or edited), by where they are, with the reason.
    pub unreadable: BTreeMap<String, String>,
    /// Instances (env, app, slot) whose record could not be read, rebuilt from what runs: the
    /// process the slot's runtime names, its version told by what it runs (else
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
    /// The config file kube-free owns, as it is on the balancer host (`None`: there is none).
    pub config: Option<String>,
    /// Every server the balancer knows, by (backend, server).
    #[serde(serialize_with = "serialize_servers")]
    pub servers: Servers,
}

/// Every server of a balancer, by (backend, server).
pub type Servers = BTreeMap<ServerKey, Server>;

/// Administrative state of a server: whether the balancer may send it new requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    /// Takes requests in proportion to its weight.
    Ready,
    /// Takes no new requests; requests and sessions in flight finish.
    Drain,
    /// Out of the balancer: no requests, no health checks.
    Maint,
}

/// The balancer's own health check of a server, as its driver reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// The last check reached the instance and it answered as healthy, and the server is not on
    /// its way down.
    Passed,
    /// The last check failed (or the server is on its way down).
    Failed,
    /// No check result (in maintenance, or not checked yet).
    None,
}

/// What a balancer counted for a server since it started (or reloaded): every outcome of a
/// request sent to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerCounters {
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx, other.
    pub responses: [u64; 6],
    /// Requests whose connection to the server failed.
    pub connection_errors: u64,
    /// Requests whose response failed (reset, timeout, bad response).
    pub response_errors: u64,
}

impl ServerCounters {
    /// Every outcome: responses of all classes, failed connections and failed responses.
    pub fn requests(&self) -> u64 {
        self.responses.iter().sum::<u64>() + self.connection_errors + self.response_errors
    }

    /// 5xx responses, failed connections and failed responses.
    pub fn errors(&self) -> u64 {
        self.responses[4] + self.connection_errors + self.response_errors
    }
}

/// One server as its balancer reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Server {
    pub admin: Admin,
    /// The balancer considers it up (running, not in maintenance).
    pub up: bool,
    pub check: Check,
    pub weight: u32,
    /// Current sessions.
    pub sessions: u64,
    pub counters: ServerCounters,
    /// The balancer's own word for the server's state, for people (`kube-free status`); never
    /// used for a decision.
    pub label: String,
}

impl Server {
    /// Ready, up, and the balancer's own check passed: weight may go to it.
    pub fn checked_up(&self) -> bool {
        self.up && self.admin == Admin::Ready && self.check == Check::Passed
    }

    /// Gets requests: weight above zero, not in maintenance, and up.
    pub fn serving(&self) -> bool {
        self.weight > 0 && self.admin != Admin::Maint && self.up
    }
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

    pub fn server(&self, balancer: &str, backend: &str, server: &str) -> Option<&Server> {
        self.balancers
            .get(balancer)?
            .servers
            .get(&(backend.to_owned(), server.to_owned()))
    }

    /// Every instance of `app` in `env` on the hosts observed (those of the environment and any
    /// other), in host and slot order. One pass over every host: who asks it of every deployment
    /// asks [`Self::by_app`] instead.
    pub fn instances_of(&self, env: &str, app: &str) -> Vec<Found<'_>> {
        self.found()
            .filter(|f| f.env == env && f.app == app)
            .collect()
    }

    /// [`Self::instances_of`] every (env, app) that has instances, gathered in one pass.
    pub fn by_app(&self) -> ByApp<'_> {
        let mut by = ByApp::default();
        for f in self.found() {
            by.0.entry(f.env)
                .or_default()
                .entry(f.app)
                .or_default()
                .push(f);
        }
        by
    }

    fn found(&self) -> impl Iterator<Item = Found<'_>> {
        self.hosts.iter().flat_map(|(host, state)| {
            state
                .instances
                .iter()
                .map(move |((env, app, slot), instance)| Found {
                    host,
                    env,
                    app,
                    slot,
                    instance,
                })
        })
    }
}

/// An instance where observation found it.
#[derive(Clone, Copy, Debug)]
pub struct Found<'a> {
    pub host: &'a str,
    pub env: &'a str,
    pub app: &'a str,
    pub slot: &'a str,
    pub instance: &'a Instance,
}

/// The instances of each (env, app), as [`ObservedState::by_app`] gathers them.
#[derive(Debug, Default)]
pub struct ByApp<'a>(BTreeMap<&'a str, BTreeMap<&'a str, Vec<Found<'a>>>>);

impl<'a> ByApp<'a> {
    /// The instances of `app` in `env` (none: empty).
    pub fn of(&self, env: &str, app: &str) -> &[Found<'a>] {
        self.0
            .get(env)
            .and_then(|apps| apps.get(app))
            .map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(admin: Admin, up: bool, check: Check, weight: u32) -> Server {
        Server {
            admin,
            up,
            check,
            weight,
            sessions: 0,
            counters: ServerCounters::default(),
            label: String::new(),
        }
    }

    #[test]
    fn weight_goes_only_to_a_ready_server_up_with_a_passed_check() {
        assert!(server(Admin::Ready, true, Check::Passed, 0).checked_up());
        assert!(!server(Admin::Ready, true, Check::Failed, 0).checked_up());
        assert!(!server(Admin::Ready, true, Check::None, 0).checked_up());
        assert!(!server(Admin::Ready, false, Check::Passed, 0).checked_up());
        assert!(!server(Admin::Drain, true, Check::Passed, 0).checked_up());
        assert!(!server(Admin::Maint, false, Check::None, 0).checked_up());
    }

    #[test]
    fn counters_count_every_outcome_and_errors_of_the_server() {
        let c = ServerCounters {
            responses: [1, 70, 3, 4, 20, 2],
            connection_errors: 5,
            response_errors: 6,
        };
        assert_eq!((c.requests(), c.errors()), (111, 31));
    }

    #[test]
    fn instances_of_an_app_are_found_on_every_host_at_once_or_by_app() {
        let mut observed = ObservedState::default();
        let record = |env: &str, app: &str, slot: &str| Instance {
            record: crate::testing::record(env, app, slot, "1", 1),
            alive: true,
            ready: None,
        };
        for (host, env, app, slot) in [
            ("a", "prod", "api", "blue"),
            ("a", "prod", "web", "blue"),
            ("b", "prod", "api", "green"),
            ("c", "stage", "api", "blue"),
        ] {
            observed
                .hosts
                .entry(host.into())
                .or_default()
                .instances
                .insert(
                    (env.into(), app.into(), slot.into()),
                    record(env, app, slot),
                );
        }
        let at = |found: &[Found]| -> Vec<(String, String)> {
            found
                .iter()
                .map(|f| (f.host.to_owned(), f.slot.to_owned()))
                .collect()
        };
        let api = vec![("a".into(), "blue".into()), ("b".into(), "green".into())];
        assert_eq!(at(&observed.instances_of("prod", "api")), api);
        let by_app = observed.by_app();
        assert_eq!(at(by_app.of("prod", "api")), api);
        assert_eq!(at(by_app.of("prod", "web")), [("a".into(), "blue".into())]);
        assert_eq!(at(by_app.of("stage", "api")), [("c".into(), "blue".into())]);
        assert!(by_app.of("stage", "web").is_empty());
        assert!(observed.instances_of("nowhere", "api").is_empty());
        assert!(by_app
            .of("prod", "api")
            .iter()
            .all(|f| f.env == "prod" && f.app == "api"));
    }
}
