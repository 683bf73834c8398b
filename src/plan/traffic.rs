//! What gets an app's traffic in an environment, as a snapshot shows it: every slot with its
//! version, process, weight and whether the balancer finds it UP. Said in words by the messages
//! about a rollback (from what was read back after it, never from the plan) and by `status`. Pure.

use super::SlotRef;
use crate::desired::DesiredState;
use crate::observed::{Admin, ObservedState};
use std::collections::BTreeMap;
use std::fmt;

/// How a slot's version reads when its instance runs the desired version with another spec
/// than the desired state renders now.
pub const EARLIER_SPEC: &str = " (earlier spec)";

/// One slot of the app, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotTraffic {
    pub at: SlotRef,
    /// The version its instance record names (`None`: no instance).
    pub version: Option<String>,
    pub alive: bool,
    /// Its weight in the balancer, when it is not in maintenance (0 otherwise).
    pub weight: u32,
    /// The balancer finds it UP.
    pub up: bool,
}

/// Every slot of `app` in `env`, on every host of the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traffic {
    pub env: String,
    pub app: String,
    pub slots: Vec<SlotTraffic>,
}

impl Traffic {
    pub fn read(desired: &DesiredState, observed: &ObservedState, env: &str, app: &str) -> Traffic {
        let mut slots = Vec::new();
        if let (Some(e), Some(d)) = (desired.environments.get(env), desired.deployment(env, app)) {
            let specs = super::build::Specs::new(desired, app, &d.version);
            for host in &e.hosts {
                for slot in &d.slots {
                    let at = SlotRef::new(env, app, host, &slot.name);
                    let inst = observed.instance(host, env, app, &slot.name);
                    // The desired version with another spec is not what is desired: it is
                    // told apart (what a failed spec change goes back to).
                    let version = inst.map(|i| {
                        let v = &i.record.version;
                        if *v == d.version && !specs.is(&at, &i.record) {
                            format!("{v}{EARLIER_SPEC}")
                        } else {
                            v.clone()
                        }
                    });
                    let server = observed.server(&e.balancer, &at.backend(), &at.server());
                    slots.push(SlotTraffic {
                        version,
                        alive: inst.is_some_and(|i| i.alive),
                        weight: server
                            .filter(|s| s.admin != Admin::Maint)
                            .map_or(0, |s| s.weight),
                        up: server.is_some_and(|s| s.up),
                        at,
                    });
                }
            }
        }
        Traffic {
            env: env.to_owned(),
            app: app.to_owned(),
            slots,
        }
    }

    /// Slots with weight, by version (`?` for a server without an instance record).
    pub fn weighted(&self) -> BTreeMap<&str, Vec<&SlotTraffic>> {
        let mut out: BTreeMap<&str, Vec<&SlotTraffic>> = BTreeMap::new();
        for s in self.slots.iter().filter(|s| s.weight > 0) {
            out.entry(s.version.as_deref().unwrap_or("?"))
                .or_default()
                .push(s);
        }
        out
    }

    /// Whether `version` has weight on any server.
    pub fn weighs(&self, version: &str) -> bool {
        self.weighted().contains_key(version)
    }

    /// Whether some server with weight is UP and its instance runs.
    pub fn serves(&self) -> bool {
        self.slots.iter().any(|s| s.weight > 0 && s.up && s.alive)
    }

    /// Hosts where an instance of `version` runs.
    pub fn running(&self, version: &str) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.alive && s.version.as_deref() == Some(version))
            .map(|s| s.at.host.as_str())
            .collect()
    }
}

/// `production/web traffic goes to 1.0.0 on web-1_blue (weight 100, UP), …`.
impl fmt::Display for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let weighted = self.weighted();
        if weighted.is_empty() {
            return write!(f, "no server of {}/{} has weight", self.env, self.app);
        }
        write!(f, "{}/{} traffic goes to ", self.env, self.app)?;
        for (i, (version, slots)) in weighted.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{version} on ")?;
            for (j, s) in slots.iter().enumerate() {
                if j > 0 {
                    f.write_str(", ")?;
                }
                let state = match (s.up, s.alive) {
                    (true, true) => "UP",
                    (true, false) => "UP, process gone",
                    (false, true) => "DOWN",
                    (false, false) => "DOWN, process gone",
                };
                write!(f, "{} (weight {}, {state})", s.at.server(), s.weight)?;
            }
        }
        Ok(())
    }
}
