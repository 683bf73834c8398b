//! The reconciler on fakes (`drivers::fake`), on tokio's paused clock: whole passes — blue-green,
//! canary with analysis, failures and their cleanup — and single live steps, asserting what the
//! fake fleet saw and the safety rules it watched. These run in seconds, without root or hosts; the
//! fleet tests (`tests/fleet_*`) do the same on real sshd, HAProxy and processes under load.
//! Here: the fleet and the helpers; `passes` (blue-green, failures, faults), `canary` (steps,
//! analysis, gates, resume, rollback), `lease` (a run that loses its lease stops at once; leases
//! kept while more are waited for), `steps` (single live steps: drain, shift, saves) and `audit`
//! (the audit line of passes, gates and suspensions).

mod audit;
mod canary;
mod lease;
mod passes;
mod rollback;
mod steps;
mod suspend;

use super::effects::Live;
use super::*;
use crate::drivers::fake::{Behaviour, Fleet};
use crate::execute::{Effects, Fault};
use crate::names::SlotRef;
use crate::observed::Admin;
use crate::plan::{Action, Scope};
use crate::state::Phase;
use std::sync::Arc;
use std::time::Duration;

const CANARY: &str = "{ canary: { steps: [{ weight: 20, pause: 10s }, { weight: 50, pause: 10s }], analysis: { max_error_rate: 0.05, min_requests: 100 }, progress_deadline: 30s } }";

fn at(host: &str, slot: &str) -> SlotRef {
    SlotRef::new("prod", "api", host, slot)
}

/// A fleet where both hosts serve 1.0 from blue, green empty and in maintenance, and a world on it
/// whose desired state (with `strategy`) asks for 2.0.
fn serving_one(strategy: &str) -> (Arc<Fleet>, Arc<World>) {
    let desired = crate::testing::two_hosts(strategy);
    let fleet = Fleet::new(&desired);
    for host in ["web-1", "web-2"] {
        fleet.place(&at(host, "blue"), "1.0", 100, Admin::Ready);
    }
    let world = Arc::new(World::new(desired, "r".into(), fleet.drivers()));
    (fleet, world)
}

/// [`serving_one`], with 2.0 behaving as `new`.
fn rolling_out(strategy: &str, new: Behaviour) -> (Arc<Fleet>, Arc<World>) {
    let (fleet, world) = serving_one(strategy);
    fleet.behave("2.0", new);
    (fleet, world)
}

/// The pass failed by the version's own fault, was cleaned up, and quarantined the version.
fn blames_the_version(err: &ReconcileError) {
    let ReconcileError::RolledBack { failed, outcome } = err else {
        panic!("not rolled back: {err:?}")
    };
    assert_eq!(failed.error.fault, Fault::Version, "{err}");
    assert!(outcome.quarantines(), "{err}");
    assert_eq!(err.next(), Next::Quarantined);
}

fn options() -> Options {
    Options {
        parallel: 8,
        max_wait: None,
    }
}

/// One pass under the lease, as `reconcile --once` runs it.
async fn pass(world: &Arc<World>) -> Result<Report, ReconcileError> {
    pass_with(world, options()).await
}

async fn pass_with(world: &Arc<World>, options: Options) -> Result<Report, ReconcileError> {
    let scope = Scope::default();
    let work = once(world.clone(), &scope, options);
    leased(world, Duration::ZERO, Duration::from_secs(30), work).await
}

/// What serves: (version, weight) of each host's blue and green.
fn weights(fleet: &Fleet) -> Vec<(String, Option<String>, u32)> {
    let mut out = Vec::new();
    for host in ["web-1", "web-2"] {
        for slot in ["blue", "green"] {
            let version = fleet.instance(&at(host, slot)).map(|(v, _)| v);
            out.push((
                format!("{host}_{slot}"),
                version,
                fleet.server(&at(host, slot)).weight,
            ));
        }
    }
    out
}

/// Every host serves `version` with full weight (1.0 from blue, 2.0 from green) and runs nothing
/// in its other slot.
fn served_by(version: &str) -> Vec<(String, Option<String>, u32)> {
    let serving = if version == "1.0" { "blue" } else { "green" };
    let mut out = Vec::new();
    for host in ["web-1", "web-2"] {
        for slot in ["blue", "green"] {
            out.push(if slot == serving {
                (format!("{host}_{slot}"), Some(version.to_owned()), 100)
            } else {
                (format!("{host}_{slot}"), None, 0)
            });
        }
    }
    out
}
