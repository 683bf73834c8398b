//! What `kube-free status` and the watcher's `/api/v1/status` say about each environment and app:
//! desired version, in sync or not, what serves, the rollout record, and every slot on every host,
//! as JSON built from the desired state and one observed snapshot. Reads nothing itself.

use crate::desired::DesiredState;
use crate::names::{backend_name, server_name};
use crate::plan::{self, Scope};

/// Per environment and app: desired version, in sync or not, and every slot on every host.
pub fn report(
    desired: &DesiredState,
    observed: &crate::observed::ObservedState,
    stale: &std::collections::BTreeSet<String>,
    scope: &Scope,
) -> Vec<serde_json::Value> {
    let mut apps = Vec::new();
    let by_app = observed.by_app();
    for (env, app, d) in desired.deployments() {
        if !scope.includes(&env.name, app) {
            continue;
        }
        let only = Scope {
            env: Some(env.name.clone()),
            app: Some(app.to_owned()),
            ..Default::default()
        };
        let plan = plan::build(desired, observed, stale, &only);
        let in_sync = plan.in_sync();
        let traffic = plan::Traffic::read(desired, observed, &env.name, app);
        let mut slots = Vec::new();
        for host in &env.hosts {
            for slot in &d.slots {
                let inst = observed.instance(host, &env.name, app, &slot.name);
                let server = observed.server(
                    &env.balancer,
                    &backend_name(&env.name, app),
                    &server_name(host, &slot.name),
                );
                slots.push(serde_json::json!({
                    "host": host,
                    "slot": slot.name,
                    "port": slot.port,
                    "version": inst.map(|i| i.record.version.clone()),
                    "revision": inst.map(|i| i.record.revision.clone()),
                    "spec": inst.and_then(|i| i.record.spec.as_ref().map(ToString::to_string)),
                    "pid": inst.map(|i| i.record.pid),
                    "alive": inst.map(|i| i.alive),
                    "ready": inst.and_then(|i| i.ready),
                    "weight": server.map(|s| s.weight),
                    "admin": server.map(|s| s.admin),
                    "balancer_status": server.map(|s| s.label.clone()),
                }));
            }
        }
        // The record of an earlier version is history, not the state of this app.
        let record = observed
            .rollout(&env.name, app)
            .filter(|r| r.version == d.version);
        apps.push(serde_json::json!({
            "env": env.name,
            "app": app,
            "desired_version": d.version,
            "strategy": d.strategy.name(),
            "in_sync": in_sync,
            "quarantined": plan::quarantine(desired, observed, &env.name, app).is_some(),
            "last_good": plan::last_good(observed, by_app.of(&env.name, app), &env.name, app, &d.version),
            "traffic": traffic.to_string(),
            "problems": plan.stuck,
            "rollout": record,
            "slots": slots,
        }));
    }
    apps
}
