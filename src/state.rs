//! State kept on hosts: the instance file that records what kube-free started in a slot, and where
//! kube-free's files live under a host's `state_dir`. Written atomically (temp file, fsync, rename);
//! a rollout record is replaced only if it is still what was read ([`Revision`], compare-and-swap);
//! the audit log ([`AuditLine`]) only grows, one JSON line per changing run.

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
    /// The container's id (docker runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What the desired state rendered for it besides the version: with the version, what it is
    /// ([`crate::desired::spec::Spec`]). `None` in a record written before kube-free kept it,
    /// or rebuilt from what runs: taken as the spec wanted, so that nothing restarts for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<crate::desired::spec::Spec>,
}

impl InstanceRecord {
    /// It is an instance of `version` with the spec `spec` (a record without a spec is taken as
    /// having the one wanted).
    pub fn is(&self, version: &str, spec: &crate::desired::spec::Spec) -> bool {
        self.version == version && self.spec.as_ref().is_none_or(|s| s == spec)
    }
}

/// The version of an instance rebuilt from what runs when its command line is not the one the desired
/// version would run: a version no desired state can name.
pub const UNKNOWN_VERSION: &str = "(unknown)";

pub fn app_dir(state_dir: &str, env: &str, app: &str) -> String {
    format!("{}/{env}/{app}", state_dir.trim_end_matches('/'))
}

pub fn instance_file(state_dir: &str, env: &str, app: &str, slot: &str) -> String {
    format!("{}/{slot}.json", app_dir(state_dir, env, app))
}

/// `<slot>.pid`: `PID START_TICKS`, written by the start script itself the moment the process
/// exists, so that a run killed before it wrote the instance file leaves no unknown process.
pub fn pid_file(state_dir: &str, env: &str, app: &str, slot: &str) -> String {
    format!("{}/{slot}.pid", app_dir(state_dir, env, app))
}

pub fn log_file(state_dir: &str, env: &str, app: &str, slot: &str) -> String {
    format!("{}/{slot}.log", app_dir(state_dir, env, app))
}

/// `<balancer host's state_dir>/rollouts/<env>/<app>.json`.
pub fn rollout_file(state_dir: &str, env: &str, app: &str) -> String {
    format!(
        "{}/rollouts/{env}/{app}.json",
        state_dir.trim_end_matches('/')
    )
}

/// `<balancer host's state_dir>/rollouts`: a directory per environment with rollout records.
pub fn rollouts_dir(state_dir: &str) -> String {
    format!("{}/rollouts", state_dir.trim_end_matches('/'))
}

/// `<balancer host's state_dir>/suspensions.json`: what `kube-free suspend` wrote.
pub fn suspensions_file(state_dir: &str) -> String {
    format!("{}/suspensions.json", state_dir.trim_end_matches('/'))
}

/// `<balancer host's state_dir>/applied.json`: the last commit a run applied ([`Applied`]).
pub fn applied_file(state_dir: &str) -> String {
    format!("{}/applied.json", state_dir.trim_end_matches('/'))
}

/// `<balancer host's state_dir>/audit.log`: one [`AuditLine`] per run that changed something.
pub fn audit_file(state_dir: &str) -> String {
    format!("{}/audit.log", state_dir.trim_end_matches('/'))
}

/// One line of `audit.log` (JSON, one object per line): a run that changed something, who ran it,
/// and what became of each rollout it moved. Appended by every changing run on the balancer hosts
/// of the environments it was about; read by `kube-free history`. The log grows: a reader accepts
/// fields it does not know, and the fields added later have defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLine {
    /// When the run began, RFC 3339 in UTC (`2026-11-30T15:00:00Z`), the clock of the machine
    /// that ran it.
    pub time: String,
    /// The full id of the commit of the desired state the run read.
    pub commit: String,
    /// `user@hostname` of the run.
    pub who: String,
    /// The command and the options that say what it acted on: `reconcile --once --env prod`,
    /// `watch`, `promote api --env prod`, `suspend --env prod --for 2h` (never a path or secret).
    pub command: String,
    /// Steps done (a cleanup's included).
    pub steps: usize,
    /// How the run ended (see `docs/operations.md`): `converged`, `quarantined`, `waiting`,
    /// `rolled-back`, `failed`, `host-lost`, `interrupted`, `lease-lost`; for the other commands
    /// `promoted`, `aborted`, `retried`, `suspended`, `resumed`.
    pub outcome: String,
    pub duration_ms: u64,
    /// Each rollout the run moved (or gate it opened), with what became of it.
    #[serde(default)]
    pub rollouts: Vec<AuditRollout>,
    /// The environments the run was about (those its scope covered).
    #[serde(default)]
    pub envs: Vec<String>,
    /// The step the run stopped at (failed, or waits at), as the plan says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    /// The run's id (as in the lease): the same line on several hosts is one run.
    #[serde(default)]
    pub run: String,
}

/// One rollout of an [`AuditLine`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRollout {
    pub env: String,
    pub app: String,
    /// The version the run rolled out (or the gate was about).
    pub version: String,
    /// `blue-green`, `rolling` or `canary`.
    pub strategy: String,
    /// The version that had the traffic before (several joined with `, `), when one had.
    #[serde(default)]
    pub from: Option<String>,
    /// What became of it: `succeeded`, `repaired` (drift put back on a version that had
    /// succeeded), `waiting`, `rolled-back`, `failed`, `stopped` (the run stopped before it
    /// finished; the next run goes on), or the gate's `promoted`, `aborted`, `retried`.
    pub result: String,
}

/// The last commit of the desired state that a run applied, kept on every balancer host so that
/// every reconciler sees it: a later commit must descend from it (rewind protection).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The full commit id.
    pub commit: String,
    /// When it was first applied (seconds since the Unix epoch).
    pub at: u64,
    /// `user@hostname` of the run.
    pub by: String,
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Moving through its steps.
    Progressing,
    /// Waiting at a `pause: {}` gate for `kube-free promote`.
    Paused,
    /// The new version takes all traffic; the old one is stopped.
    Succeeded,
    /// Rolled back (failed probe, failed analysis, progress deadline): the version is quarantined.
    Failed,
    /// Rolled back by `kube-free abort`: the version is quarantined.
    Aborted,
}

impl Phase {
    /// A rolled-back version is not rolled out again until the desired state of its app changes or
    /// `kube-free retry` is run.
    pub fn quarantines(self) -> bool {
        matches!(self, Phase::Failed | Phase::Aborted)
    }

    /// How a quarantining rollout ended, in words: `aborted` or `failed` (whether it was rolled
    /// back is for what serves to say).
    pub fn ended_as(self) -> &'static str {
        if self == Phase::Aborted {
            "aborted"
        } else {
            "failed"
        }
    }
}

/// What `kube-free promote` asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Promote {
    #[default]
    No,
    /// End the pause of this step (its index).
    Step(usize),
    /// Skip every remaining pause.
    All,
}

/// The canary's figures over one step, from the balancer's statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepFigures {
    pub step: usize,
    /// The canary's share of traffic during the step, percent.
    pub weight: u8,
    pub requests: u64,
    /// 5xx responses and failed connections.
    pub errors: u64,
    pub error_rate: f64,
    /// `passed`, `failed` or `inconclusive` (fewer requests than `min_requests`).
    pub verdict: String,
}

/// The balancer's cumulative counters of some servers at a moment: the base of a window's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub requests: u64,
    pub errors: u64,
}

/// `rollouts/<env>/<app>.json` on the balancer host: one app of one environment going to a version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRecord {
    pub env: String,
    pub app: String,
    /// Target version.
    pub version: String,
    /// Commit of the desired state the rollout started from.
    pub revision: String,
    /// Digest of the app's desired deployment in that commit: a change lifts a quarantine.
    pub fingerprint: String,
    /// `canary`, `blue-green` or `rolling`.
    pub strategy: String,
    pub phase: Phase,
    /// Index of the canary step in progress (the number of steps when all are done).
    pub step: usize,
    /// Seconds since the Unix epoch when the step in progress set its weight.
    pub step_started_at: u64,
    /// The canary's counters when the step's window began (its analysis counts from here).
    pub step_base: Counters,
    pub started_at: u64,
    pub updated_at: u64,
    #[serde(default)]
    pub promote: Promote,
    /// Analysis of each finished window, oldest first.
    #[serde(default)]
    pub analysis: Vec<StepFigures>,
    /// Why it ended, for a failed or aborted rollout.
    #[serde(default)]
    pub outcome: Option<String>,
    /// The version that served well before this rollout began: what a failed rollout brings back.
    #[serde(default)]
    pub last_good: Option<String>,
    /// The bake in progress (or passed) after traffic moved to this version.
    #[serde(default)]
    pub bake: Option<Bake>,
    /// What the file held when this record was read (or last written): a write replaces the
    /// file only if it still holds that (compare-and-swap). Not part of the file.
    #[serde(skip)]
    pub stored: Revision,
}

/// The revision of a file kube-free shares between runs (a rollout record), as one run read it: a
/// SHA-256 digest of its bytes, or none when there was no file (or an empty one). A write that
/// expects a revision replaces the file only while it still has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revision(Option<String>);

impl Revision {
    /// The revision of a file holding `bytes` (`None` or empty: no file).
    pub fn of(bytes: Option<&[u8]>) -> Revision {
        use sha2::Digest;
        Revision(
            bytes
                .filter(|b| !b.is_empty())
                .map(|b| hex::encode(sha2::Sha256::digest(b))),
        )
    }

    /// How a remote command names it: the hex digest, or `absent`.
    pub fn as_arg(&self) -> &str {
        self.0.as_deref().unwrap_or("absent")
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(digest) => write!(f, "sha256:{}", &digest[..12]),
            None => f.write_str("no file"),
        }
    }
}

impl RolloutRecord {
    /// The last version known to have served well: this one once it succeeded, else the one before.
    pub fn good_version(&self) -> Option<&str> {
        if self.phase == Phase::Succeeded {
            Some(&self.version)
        } else {
            self.last_good.as_deref()
        }
    }

    /// What this record says a rollout of `version` falls back to: for its own version the one it
    /// began after, for another the last good one it knows; never `version` itself.
    pub fn good_before(&self, version: &str) -> Option<&str> {
        if self.version == version {
            self.last_good.as_deref()
        } else {
            self.good_version()
        }
        .filter(|v| *v != version)
    }
}

/// A bake: the new servers watched after traffic moved to them, from when, and their counters then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bake {
    /// Balancer names of the servers watched (`<host>_<slot>`).
    pub servers: Vec<String>,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// Their cumulative counters when the bake began (its error rate counts from here).
    pub base: Counters,
    /// The bake ran its full length without a failure.
    pub passed: bool,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `2026-11-30 15:00:00 UTC` for seconds since the Unix epoch (proleptic Gregorian calendar).
pub fn utc(secs: u64) -> String {
    let (date, time) = civil(secs);
    format!("{date} {time} UTC")
}

/// `2026-11-30T15:00:00Z` (RFC 3339, UTC) for seconds since the Unix epoch.
pub fn rfc3339(secs: u64) -> String {
    let (date, time) = civil(secs);
    format!("{date}T{time}Z")
}

/// `("2026-11-30", "15:00:00")` for seconds since the Unix epoch (proleptic Gregorian calendar).
fn civil(secs: u64) -> (String, String) {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a civil date (Howard Hinnant's `civil_from_days`): eras of 400 years from 0000-03-01.
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_050_800), "2026-11-30T15:00:00Z");
        assert_eq!(utc(1_796_050_800), "2026-11-30 15:00:00 UTC");
    }

    /// The log grows: a line with fields this version does not know, or without those added
    /// after the first, is still read.
    #[test]
    fn an_audit_line_with_unknown_or_missing_fields_is_read() {
        let line = r#"{"time":"2026-11-30T15:00:00Z","commit":"c","who":"me@here","command":"watch","steps":3,"outcome":"converged","duration_ms":5,"rollouts":[{"env":"prod","app":"api","version":"2.0","strategy":"canary","result":"succeeded","new":1}],"added_later":{"x":1}}"#;
        let read: AuditLine = serde_json::from_str(line).unwrap();
        assert_eq!(read.rollouts[0].from, None);
        assert_eq!(read.envs, Vec::<String>::new());
        assert_eq!(read.run, "");
        assert_eq!(read.steps, 3);
    }
}
