//! State kept on hosts: the instance file that records what kube-free started in a slot, and where
//! kube-free's files live under a host's `state_dir`. Written atomically (temp file, fsync, rename).

use serde::{Deserialize, Serialize};

/// `<state_dir>/<env>/<app>/<slot>.json`: one running instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    pub env: String,
    pub app: String,
    pub slot: String,
    pub version: String,
    /// Commit of the desired state that started it.
    pub revision: String,
    pub port: u16,
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (`/proc/<pid>/stat` field 22): tells our
    /// process from a later one that reuses its pid.
    pub start_ticks: u64,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub argv: Vec<String>,
}

pub fn app_dir(state_dir: &str, env: &str, app: &str) -> String {
    format!("{}/{env}/{app}", state_dir.trim_end_matches('/'))
}

pub fn instance_file(state_dir: &str, env: &str, app: &str, slot: &str) -> String {
    format!("{}/{slot}.json", app_dir(state_dir, env, app))
}

pub fn log_file(state_dir: &str, env: &str, app: &str, slot: &str) -> String {
    format!("{}/{slot}.log", app_dir(state_dir, env, app))
}
