//! Questions later stages ask of a validated desired state, answered in one place: the deployment of
//! an app in an environment, the hosts and balancers in use, where a slot listens, how an app host
//! is reached. Validation guarantees every reference resolves, so lookups by a name that comes from
//! the desired state itself do not fail.

use super::model::{Balancer, Deployment, DesiredState, Environment, Transport};
use std::collections::BTreeSet;

impl DesiredState {
    /// The deployment of `app` in `env`, if the environment deploys it.
    pub fn deployment(&self, env: &str, app: &str) -> Option<&Deployment> {
        self.environments.get(env)?.apps.get(app)
    }

    /// The deployment of `app` in `env`, for names taken from this desired state (a plan's steps, a
    /// checked command line). Panics when the environment does not deploy the app.
    pub fn deployed(&self, env: &str, app: &str) -> &Deployment {
        &self.environments[env].apps[app]
    }

    /// Every (environment, app name, deployment), in name order.
    pub fn deployments(&self) -> impl Iterator<Item = (&Environment, &str, &Deployment)> {
        self.environments
            .values()
            .flat_map(|e| e.apps.iter().map(move |(a, d)| (e, a.as_str(), d)))
    }

    /// The environments that `balancer` serves, in name order.
    pub fn environments_of<'a>(
        &'a self,
        balancer: &'a str,
    ) -> impl Iterator<Item = &'a Environment> + 'a {
        self.environments
            .values()
            .filter(move |e| e.balancer == balancer)
    }

    /// The backends `balancer` serves: one per environment it serves and app deployed there, in name
    /// order.
    pub fn backends_of(&self, balancer: &str) -> Vec<String> {
        self.environments_of(balancer)
            .flat_map(|e| {
                e.apps
                    .keys()
                    .map(|a| crate::names::backend_name(&e.name, a))
            })
            .collect()
    }

    /// The balancer of `env`.
    pub fn balancer_of(&self, env: &str) -> &Balancer {
        &self.balancers[&self.environments[env].balancer]
    }

    /// Hosts that run apps: every environment's hosts.
    pub fn app_hosts(&self) -> BTreeSet<&str> {
        self.environments
            .values()
            .flat_map(|e| e.hosts.iter().map(String::as_str))
            .collect()
    }

    /// Hosts of `hosts:` that no environment uses and no balancer in use is on: an app host taken
    /// out of every environment, where what kube-free started may still run (orphans).
    pub fn spare_hosts(&self) -> BTreeSet<&str> {
        let used = self.hosts_in_use();
        self.hosts
            .keys()
            .map(String::as_str)
            .filter(|h| !used.contains(h))
            .collect()
    }

    /// Hosts where kube-free may have started instances: the app hosts and the spare ones.
    pub fn instance_hosts(&self) -> BTreeSet<&str> {
        let mut hosts = self.app_hosts();
        hosts.extend(self.spare_hosts());
        hosts
    }

    /// Balancers that some environment uses.
    pub fn balancers_in_use(&self) -> BTreeSet<&str> {
        self.environments
            .values()
            .map(|e| e.balancer.as_str())
            .collect()
    }

    /// Hosts of the balancers in use: where the leases and rollout records live.
    pub fn balancer_hosts(&self) -> BTreeSet<&str> {
        self.balancers_in_use()
            .into_iter()
            .map(|b| self.balancers[b].host.as_str())
            .collect()
    }

    /// Hosts that take part in a run: every app host and every balancer host in use.
    pub fn hosts_in_use(&self) -> BTreeSet<&str> {
        let mut hosts = self.app_hosts();
        hosts.extend(self.balancer_hosts());
        hosts
    }

    /// The hosts a run limited to `env` and `app` (each: all when `None`) reaches: the hosts of
    /// every environment in that scope that deploys the app, and their balancers' hosts. A
    /// narrowed run connects to, observes and locks these only.
    pub fn hosts_in_scope(&self, env: Option<&str>, app: Option<&str>) -> BTreeSet<&str> {
        self.environments
            .values()
            .filter(|e| env.is_none_or(|n| n == e.name))
            .filter(|e| app.is_none_or(|a| e.apps.contains_key(a)))
            .flat_map(|e| self.hosts_of(&e.name))
            .collect()
    }

    /// The hosts of `env` and its balancer's host.
    pub fn hosts_of(&self, env: &str) -> BTreeSet<&str> {
        let e = &self.environments[env];
        let mut hosts: BTreeSet<&str> = e.hosts.iter().map(String::as_str).collect();
        hosts.insert(&self.balancer_of(env).host);
        hosts
    }

    /// The port of `slot` of `app` in `env`.
    pub fn slot_port(&self, env: &str, app: &str, slot: &str) -> Option<u16> {
        self.deployment(env, app)?
            .slots
            .iter()
            .find(|s| s.name == slot)
            .map(|s| s.port)
    }

    /// The directory of kube-free's files on `host`.
    pub fn state_dir(&self, host: &str) -> &str {
        &self.hosts[host].state_dir
    }

    /// The address the balancer and the prober reach an app host at (IPv6 in brackets); a `local`
    /// host is this machine.
    pub fn host_address(&self, host: &str) -> String {
        match self.hosts.get(host).map(|h| &h.transport) {
            Some(Transport::Ssh { address, .. }) if address.contains(':') => {
                format!("[{address}]")
            }
            Some(Transport::Ssh { address, .. }) => address.clone(),
            _ => "127.0.0.1".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_and_balancers_in_use_are_answered_once() {
        let yaml = crate::testing::two_hosts_yaml("blue-green")
            .replace("192.0.2.12", "\"2001:db8::12\"")
            .replace("  lb-1:", "  spare: { address: 192.0.2.99 }\n  lb-1:")
            .replace(
                "  edge: { kind: haproxy, host: lb-1 }",
                "  edge: { kind: haproxy, host: lb-1 }\n  unused: { kind: haproxy, host: spare }",
            );
        let d = crate::testing::desired(&yaml);
        let set = |v: &[&'static str]| v.iter().copied().collect::<std::collections::BTreeSet<_>>();
        assert_eq!(d.app_hosts(), set(&["web-1", "web-2"]));
        assert_eq!(d.balancers_in_use(), set(&["edge"]));
        assert_eq!(d.balancer_hosts(), set(&["lb-1"]));
        assert_eq!(d.hosts_in_use(), set(&["lb-1", "web-1", "web-2"]));
        assert_eq!(d.hosts_of("prod"), set(&["lb-1", "web-1", "web-2"]));
        assert_eq!(d.slot_port("prod", "api", "green"), Some(8001));
        assert_eq!(d.slot_port("prod", "api", "red"), None);
        assert_eq!(d.deployment("prod", "api").unwrap().version, "2.0");
        assert!(d.deployment("staging", "api").is_none());
        assert_eq!(d.host_address("web-2"), "[2001:db8::12]");
        assert_eq!(d.host_address("web-1"), "192.0.2.11");
        assert_eq!(d.environments_of("edge").count(), 1);
        assert_eq!(d.environments_of("unused").count(), 0);
        assert_eq!(d.backends_of("edge"), ["kf_prod_api"]);
        assert!(d.backends_of("unused").is_empty());
        assert_eq!(d.deployments().count(), 1);
    }

    #[test]
    fn a_narrowed_run_reaches_the_hosts_of_its_scope_only() {
        let yaml = crate::testing::two_hosts_yaml("blue-green")
            .replace(
                "  lb-1:",
                "  web-9: { address: 192.0.2.19 }\n  lb-2: { address: 192.0.2.20 }\n  lb-1:",
            )
            .replace(
                "  edge: { kind: haproxy, host: lb-1 }",
                "  edge: { kind: haproxy, host: lb-1 }\n  side: { kind: haproxy, host: lb-2 }",
            )
            .replace("    drain: 1s", "    drain: 1s\n  web:\n    runtime: { kind: process, command: \"/opt/web {port}\" }\n    slots: { blue: 9000, green: 9001 }")
            + "  staging:\n    balancer: side\n    hosts: [web-9]\n    apps:\n      web: { version: \"1\", listen: \"0.0.0.0:81\" }\n";
        let d = crate::testing::desired(&yaml);
        let set = |v: &[&'static str]| v.iter().copied().collect::<std::collections::BTreeSet<_>>();
        let all = set(&["lb-1", "lb-2", "web-1", "web-2", "web-9"]);
        assert_eq!(d.hosts_in_scope(None, None), all);
        assert_eq!(d.hosts_in_use(), all);
        assert_eq!(
            d.hosts_in_scope(Some("prod"), None),
            set(&["lb-1", "web-1", "web-2"])
        );
        assert_eq!(
            d.hosts_in_scope(Some("staging"), None),
            set(&["lb-2", "web-9"])
        );
        assert_eq!(d.hosts_in_scope(None, Some("web")), set(&["lb-2", "web-9"]));
        assert_eq!(
            d.hosts_in_scope(None, Some("api")),
            set(&["lb-1", "web-1", "web-2"])
        );
        assert!(d.hosts_in_scope(Some("prod"), Some("web")).is_empty());
    }
}
