//! Fixtures the library's unit tests share (tests only): a desired state of two app hosts behind one
//! balancer, with the strategy a test asks for; an instance record.

use crate::desired::{load, DesiredState, MemFiles};

/// `prod` deploys `api` 2.0 with `strategy` on `web-1` and `web-2`, behind the balancer `edge` on
/// `lb-1`; slots blue (8000) and green (8001); short probes and drain.
pub fn two_hosts_yaml(strategy: &str) -> String {
    format!(
        r#"version: 1
hosts:
  web-1: {{ address: 192.0.2.11 }}
  web-2: {{ address: 192.0.2.12 }}
  lb-1: {{ address: 192.0.2.10 }}
balancers:
  edge: {{ kind: haproxy, host: lb-1 }}
apps:
  api:
    runtime: {{ kind: process, command: "/opt/api/{{version}}/api --port {{port}}" }}
    slots: {{ blue: 8000, green: 8001 }}
    probe: {{ path: /ready, interval: 100ms, healthy_after: 2, deadline: 2s }}
    drain: 1s
    bake: 5s
environments:
  prod:
    balancer: edge
    hosts: [web-1, web-2]
    apps:
      api: {{ version: "2.0", listen: "0.0.0.0:80", strategy: {strategy} }}
"#
    )
}

/// The desired state of `yaml` (a whole `kube-free.yaml`), which must be valid.
pub fn desired(yaml: &str) -> DesiredState {
    load(&MemFiles::default().with("kube-free.yaml", yaml)).unwrap()
}

/// [`two_hosts_yaml`], loaded.
pub fn two_hosts(strategy: &str) -> DesiredState {
    desired(&two_hosts_yaml(strategy))
}

/// The record of an instance of `version` of `app` in `env`, in `slot` on `port`, started by
/// revision `r` as pid 1, without a spec.
pub fn record(
    env: &str,
    app: &str,
    slot: &str,
    version: &str,
    port: u16,
) -> crate::state::InstanceRecord {
    crate::state::InstanceRecord {
        env: env.into(),
        app: app.into(),
        slot: slot.into(),
        version: version.into(),
        revision: "r".into(),
        port,
        pid: 1,
        start_ticks: 1,
        started_at: 0,
        argv: vec![],
        container: None,
        spec: None,
    }
}
