//! Names kube-free gives what it owns, the one place they are made: an instance slot
//! ([`SlotRef`]: environment, app, host, slot), and in every balancer one backend per environment
//! and app and one server per host and slot, and on a host one container per slot. Drivers use these
//! names as they are (HAProxy backends and servers, nginx upstreams, containers); the planner and the
//! observed snapshot know servers only by them.

use serde::Serialize;

/// A server of a balancer: (backend, server).
pub type ServerKey = (String, String);

/// The backend of `app` in `env`.
pub fn backend_name(env: &str, app: &str) -> String {
    format!("kf_{env}_{app}")
}

/// The container of `slot` of `app` in `env`, on its host.
pub fn container_name(env: &str, app: &str, slot: &str) -> String {
    format!("kf-{env}-{app}-{slot}")
}

/// The server of `slot` on `host`, in its app's backend.
pub fn server_name(host: &str, slot: &str) -> String {
    format!("{host}_{slot}")
}

/// One instance slot of one app of one environment on one host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SlotRef {
    pub env: String,
    pub app: String,
    pub host: String,
    pub slot: String,
}

impl SlotRef {
    pub fn new(env: &str, app: &str, host: &str, slot: &str) -> SlotRef {
        SlotRef {
            env: env.to_owned(),
            app: app.to_owned(),
            host: host.to_owned(),
            slot: slot.to_owned(),
        }
    }

    pub fn backend(&self) -> String {
        backend_name(&self.env, &self.app)
    }

    pub fn server(&self) -> String {
        server_name(&self.host, &self.slot)
    }

    /// The slot's container (docker runtime).
    pub fn container(&self) -> String {
        container_name(&self.env, &self.app, &self.slot)
    }

    /// The slot's server in its balancer.
    pub fn server_key(&self) -> ServerKey {
        (self.backend(), self.server())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        let at = SlotRef::new("prod", "api", "web-1", "blue");
        assert_eq!(
            at.server_key(),
            ("kf_prod_api".to_owned(), "web-1_blue".to_owned())
        );
    }
}
