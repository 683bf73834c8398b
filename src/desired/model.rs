//! The validated desired state: what every later stage (plan, execute, status) works from. Built only
//! by `validate`, so holding one means every name, reference, port and duration in it was checked.

use super::duration;
use super::template::Template;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Name of a host, app, environment, balancer or slot (`^[a-z0-9][a-z0-9-]{0,62}$`).
pub type Name = String;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DesiredState {
    pub hosts: BTreeMap<Name, Host>,
    pub ssh: SshSettings,
    pub balancers: BTreeMap<Name, Balancer>,
    pub apps: BTreeMap<Name, App>,
    pub environments: BTreeMap<Name, Environment>,
    /// Where events are sent; not part of any app's fingerprint (changing them starts no rollout).
    pub notifications: Vec<Notification>,
    /// Stop what kube-free started that this state no longer has, for every app (`prune`).
    pub prune: bool,
}

impl DesiredState {
    /// A digest of everything that shapes `app` in `env` (its definition, its deployment, the
    /// environment's hosts and balancer): equal digests mean the same rollout. Stable across runs
    /// (FNV-1a over the JSON form), not across kube-free versions that change that form.
    pub fn fingerprint(&self, env: &str, app: &str) -> String {
        let environment = self.environments.get(env);
        let json = serde_json::json!({
            "app": self.apps.get(app),
            "deployment": environment.and_then(|e| e.apps.get(app)),
            "hosts": environment.map(|e| &e.hosts),
            "balancer": environment.map(|e| &e.balancer),
        });
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in json.to_string().bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Host {
    pub name: Name,
    pub transport: Transport,
    /// Absolute directory for kube-free's files on the host.
    pub state_dir: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Transport {
    Ssh {
        address: String,
        user: String,
        port: u16,
    },
    Local,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SshSettings {
    /// known_hosts as a path inside the desired-state directory of the commit.
    pub known_hosts: Option<String>,
    pub identity_file: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Balancer {
    pub name: Name,
    pub kind: BalancerKind,
    pub host: Name,
    pub admin_socket: String,
    pub config_file: String,
    /// argv, split by shell quoting rules; never run through a shell.
    pub reload_command: Vec<String>,
    /// nginx: how weights change (HAProxy: always at runtime, `Dynamic`).
    pub mode: NginxMode,
    /// nginx: argv that checks the whole config (`nginx -t`); empty for HAProxy.
    pub test_command: Vec<String>,
    /// nginx, dynamic mode: the Lua module file to check for on the balancer host.
    pub lua_module: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BalancerKind {
    Haproxy,
    Nginx,
}

/// How the nginx driver changes weights and states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NginxMode {
    /// At runtime, through the Lua endpoint kube-free renders; a reload only for new frontends or
    /// servers.
    #[default]
    Dynamic,
    /// Every change rewrites the upstreams, tests the config and reloads nginx.
    Reload,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct App {
    pub name: Name,
    pub runtime: Runtime,
    /// Slots in name order; exactly two.
    pub slots: Vec<Slot>,
    pub probe: Probe,
    #[serde(serialize_with = "duration::serialize")]
    pub drain: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub stop_timeout: Duration,
    /// How long the old instances stay kept running to take traffic back after it moved (zero: not at all).
    #[serde(serialize_with = "duration::serialize")]
    pub bake: Duration,
    /// Stop the app's instances this state no longer has (`prune`); not part of its
    /// fingerprint (changing it starts no rollout).
    #[serde(skip)]
    pub prune: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Runtime {
    Process {
        /// argv; each word a template.
        command: Vec<Template>,
        env: BTreeMap<String, EnvValue>,
    },
    Docker {
        image: Template,
        command: Option<Vec<Template>>,
        env: BTreeMap<String, EnvValue>,
        cli: ContainerCli,
        network: ContainerNetwork,
        /// Address the slot's port is published on (`network: bridge`); `None`: every address.
        bind: Option<std::net::IpAddr>,
        pull: PullPolicy,
    },
}

/// The value of one environment variable of an app.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EnvValue {
    /// A text from the desired state, with placeholders.
    Text(Template),
    /// A secret read from `file` on the machine that runs kube-free, by
    /// [`DesiredState::read_secrets`](super::DesiredState::read_secrets); only the path is in
    /// the desired state.
    File {
        file: String,
        /// Where `file` is given, for errors about it.
        #[serde(skip)]
        origin: Box<super::Diagnostic>,
        #[serde(skip)]
        value: Option<SecretValue>,
    },
}

/// A secret's value: never printed (its `Debug` says `<secret>`), never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(pub String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl Runtime {
    /// The app's own environment variables.
    pub fn env(&self) -> &BTreeMap<String, EnvValue> {
        match self {
            Runtime::Process { env, .. } | Runtime::Docker { env, .. } => env,
        }
    }

    pub(super) fn env_mut(&mut self) -> &mut BTreeMap<String, EnvValue> {
        match self {
            Runtime::Process { env, .. } | Runtime::Docker { env, .. } => env,
        }
    }

    /// The image an instance of `version` runs, when the runtime runs images.
    pub fn image(&self) -> Option<&Template> {
        match self {
            Runtime::Docker { image, .. } => Some(image),
            Runtime::Process { .. } => None,
        }
    }
}

/// The container tool a docker runtime runs on its hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerCli {
    Docker,
    Podman,
}

impl ContainerCli {
    pub fn program(self) -> &'static str {
        match self {
            ContainerCli::Docker => "docker",
            ContainerCli::Podman => "podman",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerNetwork {
    /// The engine's own network; the slot's port is published.
    Bridge,
    /// The host's network.
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Only when the host does not have the image.
    Missing,
    Always,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Slot {
    pub name: Name,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Probe {
    pub path: String,
    #[serde(serialize_with = "duration::serialize")]
    pub interval: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub timeout: Duration,
    pub healthy_after: u32,
    #[serde(serialize_with = "duration::serialize")]
    pub deadline: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Environment {
    pub name: Name,
    /// File that defines it, relative to the desired-state directory.
    pub file: String,
    pub balancer: Name,
    pub hosts: Vec<Name>,
    pub apps: BTreeMap<Name, Deployment>,
}

/// One app in one environment: what should run and how to get there.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Deployment {
    pub app: Name,
    pub version: String,
    pub listen: Listen,
    pub strategy: Strategy,
    /// Effective slots: the environment's override or the app's.
    pub slots: Vec<Slot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listen {
    /// Bind address as HAProxy takes it: an IP (IPv6 in brackets) or `*`.
    pub address: String,
    pub port: u16,
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.address, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Strategy {
    BlueGreen {
        /// Judges the new version during its bake.
        analysis: Option<Analysis>,
    },
    Rolling {
        batch: Batch,
        on_failure: OnFailure,
        /// Judges each batch during its bake.
        analysis: Option<Analysis>,
    },
    Canary {
        steps: Vec<CanaryStep>,
        analysis: Option<Analysis>,
        /// Longest a step may run beyond its own pause before the canary is rolled back.
        #[serde(serialize_with = "duration::serialize")]
        progress_deadline: Duration,
    },
}

impl Strategy {
    /// `blue-green`, `rolling` or `canary`.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::BlueGreen { .. } => "blue-green",
            Strategy::Rolling { .. } => "rolling",
            Strategy::Canary { .. } => "canary",
        }
    }

    /// The error-rate rules that judge the new version (the canary's steps, every strategy's bake).
    pub fn analysis(&self) -> Option<&Analysis> {
        match self {
            Strategy::BlueGreen { analysis }
            | Strategy::Rolling { analysis, .. }
            | Strategy::Canary { analysis, .. } => analysis.as_ref(),
        }
    }

    /// Whether a failed rollout leaves the hosts it finished on the new version (`on_failure: hold`).
    pub fn holds(&self) -> bool {
        matches!(
            self,
            Strategy::Rolling {
                on_failure: OnFailure::Hold,
                ..
            }
        )
    }

    /// A canary's share of traffic during step `step`: the weight of the last step up to it that
    /// sets one (0 before any does, and for other strategies).
    pub fn canary_weight(&self, step: usize) -> u8 {
        match self {
            Strategy::Canary { steps, .. } => steps
                .iter()
                .take(step + 1)
                .rev()
                .find_map(|s| s.weight)
                .unwrap_or(0),
            _ => 0,
        }
    }
}

/// What a failed rolling update does with the batches it finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Bring them back to the last good version.
    #[default]
    Revert,
    /// Leave them on the new version.
    Hold,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Batch {
    /// This many hosts at a time.
    Hosts(u32),
    /// This share of the environment's hosts at a time, rounded up, at least one.
    Percent(u8),
}

impl Batch {
    /// Hosts per batch for an environment of `hosts` hosts.
    pub fn size(self, hosts: usize) -> usize {
        let n = match self {
            Batch::Hosts(n) => n as usize,
            Batch::Percent(p) => (hosts * p as usize).div_ceil(100),
        };
        n.clamp(1, hosts.max(1))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CanaryStep {
    /// Canary's share of traffic, percent.
    pub weight: Option<u8>,
    pub pause: Option<Pause>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pause {
    #[serde(serialize_with = "duration::serialize")]
    For(Duration),
    UntilPromoted,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Analysis {
    pub max_error_rate: f64,
    pub min_requests: u64,
    /// Paths every canary instance must answer with a 2xx at the end of each window.
    pub checks: Vec<String>,
}

/// One notification target: an HTTP(S) endpoint that receives a POST per event it wants.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    /// The `name` given, or the target's position in the list (`"0"`, `"1"`, ...).
    pub name: String,
    /// An `http://` or `https://` URL, checked to parse.
    pub url: String,
    pub format: NotifyFormat,
    /// Events it receives, each once, in the order of [`EventKind::ALL`].
    pub events: Vec<EventKind>,
    pub header: Option<NotifyHeader>,
    /// Absolute path of the HMAC key file (`json` format only).
    pub secret_file: Option<String>,
    /// Absolute path of a PEM file with extra root certificates.
    pub ca_file: Option<String>,
}

impl Notification {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// `{event, env, app, commit, version, message, time}`, optionally signed.
    #[default]
    Json,
    /// A Slack incoming webhook's `{"text": ...}`.
    Slack,
}

/// An extra request header; the value is read from `value_file` when the sender starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotifyHeader {
    pub name: String,
    pub value_file: String,
}

/// What happened, as notifications name it (`as_str` is the name written in `events:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A rollout of a new version began.
    Started,
    /// A rollout moved on by one step (a canary weight, a rolling batch).
    Step,
    /// A rollout waits at a gate for `kube-free promote`.
    Paused,
    /// An operator promoted a paused rollout.
    Promoted,
    /// A rollout finished: the new version serves all traffic.
    Succeeded,
    /// A rollout failed and was rolled back (or held).
    Failed,
    /// A version was quarantined: it is not tried again until the desired state changes or `retry`.
    Quarantined,
    /// Drift from the desired state (a stopped instance, a changed weight) was put right.
    DriftCorrected,
    /// Syncing keeps failing (the repository cannot be read, hosts cannot be reached, ...).
    SyncFailing,
    /// A condition that was notified as failing is over.
    Recovered,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Started,
        EventKind::Step,
        EventKind::Paused,
        EventKind::Promoted,
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Quarantined,
        EventKind::DriftCorrected,
        EventKind::SyncFailing,
        EventKind::Recovered,
    ];

    /// The name used in `events:` and in the JSON body's `event`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Step => "step",
            EventKind::Paused => "paused",
            EventKind::Promoted => "promoted",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::Quarantined => "quarantined",
            EventKind::DriftCorrected => "drift_corrected",
            EventKind::SyncFailing => "sync_failing",
            EventKind::Recovered => "recovered",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Batch;

    #[test]
    fn batch_sizes_round_up_and_stay_within_the_environment() {
        assert_eq!(Batch::Hosts(1).size(4), 1);
        assert_eq!(Batch::Hosts(9).size(4), 4);
        assert_eq!(Batch::Percent(25).size(4), 1);
        assert_eq!(Batch::Percent(25).size(5), 2);
        assert_eq!(Batch::Percent(100).size(3), 3);
        assert_eq!(Batch::Percent(1).size(3), 1);
    }
}
