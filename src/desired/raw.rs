//! Raw desired-state types: mirror the YAML of design §2 key for key, derive serde (to be filled by the
//! lenient deserializer) and schemars (to generate `schema/*.schema.json`). Every key is optional here;
//! which ones are required, and what values mean, is decided by `validate`. No logic lives here.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::marker::PhantomData;

pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";
pub const VERSION_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$";
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// The root file, `kube-free.yaml`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kube-free desired state (kube-free.yaml)")]
pub struct RawConfig {
    /// Format version; must be 1.
    #[schemars(required, range(min = 1, max = 1))]
    pub version: Option<u32>,
    /// Machines kube-free deploys to or drives, by name.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub hosts: BTreeMap<String, RawHost>,
    /// How hosts are reached over SSH.
    pub ssh: Option<RawSsh>,
    /// Load balancers, by name.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub balancers: BTreeMap<String, RawBalancer>,
    /// Applications: how to run them, their slots, probe and shutdown.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub apps: BTreeMap<String, RawApp>,
    /// Environments written inline; each may instead be a file `environments/<name>.yaml`.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub environments: BTreeMap<String, RawEnvironment>,
    /// Where `kube-free watch` and `kube-free reconcile --once` send events (rollout started,
    /// succeeded, failed, ...): HTTP(S) endpoints, generic JSON or a Slack incoming webhook.
    #[serde(default)]
    pub notifications: Vec<RawNotification>,
    /// Stop what kube-free started that the desired state no longer has (an app, an environment,
    /// an app's host or slot taken out), after taking it out of the balancer; default false.
    /// A run that would prune more than half of what kube-free runs, or all of it, refuses
    /// unless `reconcile --prune-all`.
    pub prune: Option<bool>,
}

/// A host: reached over SSH (the default) or, with `transport: local`, this machine itself.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Host")]
pub struct RawHost {
    /// IP address or DNS name; required for SSH hosts.
    pub address: Option<String>,
    /// SSH user; default `root`.
    pub user: Option<String>,
    /// SSH port; default 22.
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// Absolute directory for kube-free's files on the host; default `/var/lib/kube-free`.
    pub state_dir: Option<String>,
    /// `ssh` (default) or `local`.
    pub transport: Option<RawTransport>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "Transport")]
pub enum RawTransport {
    #[serde(rename = "ssh")]
    Ssh,
    #[serde(rename = "local")]
    Local,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Ssh")]
pub struct RawSsh {
    /// known_hosts file, as a path inside this repository; host keys are always checked.
    pub known_hosts: Option<String>,
    /// Private key file on the machine running kube-free (`~` allowed); default: agent / ssh defaults.
    pub identity_file: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Balancer")]
pub struct RawBalancer {
    /// Balancer software: `haproxy` or `nginx`.
    #[schemars(required)]
    pub kind: Option<RawBalancerKind>,
    /// Name of the host the balancer runs on.
    #[schemars(required, regex(pattern = NAME_PATTERN))]
    pub host: Option<String>,
    /// Control socket on that host: HAProxy's admin socket (default `/run/haproxy/admin.sock`), or
    /// for nginx in `mode: dynamic` the unix socket of the endpoint kube-free renders and alone
    /// reaches (weights, states, counters, the loaded config's generation; default
    /// `/run/kube-free/nginx-admin.sock`, in a directory of its own that kube-free makes with mode
    /// 0700).
    pub admin_socket: Option<String>,
    /// Config file kube-free owns and renders; default `/etc/haproxy/kube-free.cfg` (HAProxy) or
    /// `/etc/nginx/conf.d/kube-free.conf` (nginx, included in the `http` block).
    pub config_file: Option<String>,
    /// Command that reloads the balancer hitlessly; default `systemctl reload haproxy` or
    /// `systemctl reload nginx`.
    pub reload_command: Option<String>,
    /// nginx only: `dynamic` (default: weights change at runtime through Lua, a reload only when
    /// frontends or servers change; needs the Lua module) or `reload` (plain nginx: every change
    /// is a config test and a reload).
    pub mode: Option<RawNginxMode>,
    /// nginx only: command that checks nginx's whole config with kube-free's file in place;
    /// default `nginx -t`.
    pub test_command: Option<String>,
    /// nginx `mode: dynamic` only: the Lua module file (`ngx_http_lua_module.so`) that nginx.conf
    /// loads, checked on the balancer host before kube-free installs its config;
    /// `kube-free nginx-snippet` prints the `load_module` lines for it. Default: not checked (the
    /// distribution loads the module, as Debian's `libnginx-mod-http-lua` does).
    pub lua_module: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "NginxMode")]
pub enum RawNginxMode {
    #[serde(rename = "dynamic")]
    Dynamic,
    #[serde(rename = "reload")]
    Reload,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "BalancerKind")]
pub enum RawBalancerKind {
    #[serde(rename = "haproxy")]
    Haproxy,
    #[serde(rename = "nginx")]
    Nginx,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "App")]
pub struct RawApp {
    /// How an instance is started.
    #[schemars(required)]
    pub runtime: Option<RawRuntime>,
    /// Slot name → port; one port per slot on every host. Blue-green and canary need two slots.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub slots: BTreeMap<String, u16>,
    /// Readiness probe.
    pub probe: Option<RawProbe>,
    /// Longest wait for in-flight requests at the balancer before an instance is taken out; default 10s.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub drain: Option<String>,
    /// SIGTERM grace before SIGKILL; default 30s.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub stop_timeout: Option<String>,
    /// After traffic moves to a new version, how long the old instances stay running, drained and
    /// ready to take it back, while the new servers are watched (DOWN, exited, error rate above the
    /// strategy's `analysis`); a failure moves all traffic back and quarantines the version.
    /// Default 30s; `0s` turns it off.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub bake: Option<String>,
    /// Stop this app's instances that the desired state no longer has (on a host or in an
    /// environment taken out of it, or in a slot renamed), as the top-level `prune` does for
    /// every app; default false.
    pub prune: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Runtime")]
pub struct RawRuntime {
    /// `process` or `docker`.
    #[schemars(required)]
    pub kind: Option<RawRuntimeKind>,
    /// Command line (process runtime, required; docker: optional override). Placeholders: {version},
    /// {port}, {slot}, {app}, {env}, {host}; `{{` and `}}` for literal braces.
    pub command: Option<String>,
    /// Image reference (docker runtime), e.g. `registry.local/api:{version}`. Placeholders:
    /// {version}, {app}, {env}, {host}.
    pub image: Option<String>,
    /// Environment variables for the instance: a text (placeholders allowed), or
    /// `{ file: /absolute/path }`, a secret read from that file on the machine that runs kube-free
    /// (only its owner may access it). They reach the instance through its standard input
    /// (process) or a 0600 env file removed after the start (docker), never through a command line.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" }))]
    pub env: BTreeMap<String, Loose<EnvValueSchema>>,
    /// Docker runtime: the command-line tool on the host, `docker` (default) or `podman`.
    pub cli: Option<RawContainerCli>,
    /// Docker runtime: `bridge` (default; the slot's port is published on `bind`) or `host` (the
    /// container shares the host's network and listens on the slot's port itself).
    pub network: Option<RawContainerNetwork>,
    /// Docker runtime, `network: bridge`: the host address the slot's port is published on; default
    /// every address.
    pub bind: Option<String>,
    /// Docker runtime: when the image is pulled before the start, `missing` (default: only when
    /// the host does not have it) or `always`.
    pub pull: Option<RawPullPolicy>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "ContainerCli")]
pub enum RawContainerCli {
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "podman")]
    Podman,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "ContainerNetwork")]
pub enum RawContainerNetwork {
    #[serde(rename = "bridge")]
    Bridge,
    #[serde(rename = "host")]
    Host,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "PullPolicy")]
pub enum RawPullPolicy {
    #[serde(rename = "missing")]
    Missing,
    #[serde(rename = "always")]
    Always,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "RuntimeKind")]
pub enum RawRuntimeKind {
    #[serde(rename = "process")]
    Process,
    #[serde(rename = "docker")]
    Docker,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Probe")]
pub struct RawProbe {
    /// HTTP path probed on the instance's port; default `/readyz`.
    pub path: Option<String>,
    /// Time between probes; default 1s.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Timeout of one probe; default 2s.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Consecutive passes that make an instance ready; default 3.
    #[schemars(range(min = 1))]
    pub healthy_after: Option<u32>,
    /// Longest wait for readiness before the rollout fails; default 60s.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub deadline: Option<String>,
}

/// One environment (inline under `environments:` or the whole body of `environments/<name>.yaml`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kube-free environment (environments/<name>.yaml)")]
#[schemars(rename = "Environment")]
pub struct RawEnvironment {
    /// Name of the balancer that serves this environment.
    #[schemars(required, regex(pattern = NAME_PATTERN))]
    pub balancer: Option<String>,
    /// Names of the hosts the environment's apps run on.
    #[schemars(required, length(min = 1))]
    pub hosts: Option<Vec<String>>,
    /// App name → what runs in this environment.
    #[serde(default)]
    #[schemars(required, extend("propertyNames" = { "pattern": NAME_PATTERN }, "minProperties" = 1))]
    pub apps: BTreeMap<String, RawEnvApp>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "EnvApp")]
pub struct RawEnvApp {
    /// Version to run, e.g. "1.4.2" (quote it).
    #[schemars(required, regex(pattern = VERSION_PATTERN))]
    pub version: Option<String>,
    /// Frontend address on the balancer host, "ADDR:PORT".
    #[schemars(required)]
    pub listen: Option<String>,
    /// How to move traffic to a new version; default blue-green.
    pub strategy: Option<RawStrategy>,
    /// Per-environment slot ports, when two environments share a host.
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub slots: Option<BTreeMap<String, u16>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "Strategy")]
pub enum RawStrategy {
    /// Start the new version beside the old one, then move all traffic at once.
    #[serde(rename = "blue-green")]
    BlueGreenShort,
    #[serde(rename = "blue_green")]
    BlueGreen(RawBlueGreen),
    /// Replace hosts batch by batch.
    #[serde(rename = "rolling")]
    Rolling(RawRolling),
    /// Move traffic by weight steps, with pauses and analysis.
    #[serde(rename = "canary")]
    Canary(RawCanary),
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "BlueGreen")]
pub struct RawBlueGreen {
    /// Error rate that fails the new version during its bake, from the balancer's statistics.
    pub analysis: Option<RawAnalysis>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Rolling")]
pub struct RawRolling {
    /// Hosts per batch: a count (e.g. 1) or a share of the environment's hosts (e.g. "25%"); default 1.
    pub batch: Option<Loose<BatchSchema>>,
    /// When a batch fails: `revert` (default) brings the batches already done back to the last
    /// good version; `hold` leaves them on the new one, for an operator to look first.
    pub on_failure: Option<RawOnFailure>,
    /// Error rate that fails the new version during each batch's bake, from the balancer's
    /// statistics.
    pub analysis: Option<RawAnalysis>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "OnFailure")]
pub enum RawOnFailure {
    #[serde(rename = "revert")]
    Revert,
    #[serde(rename = "hold")]
    Hold,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Canary")]
pub struct RawCanary {
    /// Steps in order: `weight` sets the canary's share of traffic, `pause` waits.
    #[schemars(required, length(min = 1))]
    pub steps: Option<Vec<RawCanaryStep>>,
    /// Checks between steps, from the balancer's statistics.
    pub analysis: Option<RawAnalysis>,
    /// Longest a step may run beyond its own pause (an inconclusive analysis extends the pause up to
    /// this) before the canary is rolled back. Default 10m.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub progress_deadline: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CanaryStep")]
pub struct RawCanaryStep {
    /// Canary's share of the environment's traffic, percent, 0–100, never decreasing.
    #[schemars(range(max = 100))]
    pub weight: Option<u32>,
    /// A duration ("2m") or `{}` to wait for `kube-free promote`.
    pub pause: Option<Loose<PauseSchema>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Analysis")]
pub struct RawAnalysis {
    /// Highest acceptable share of failed responses (5xx and connection errors), 0–1.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: Option<f64>,
    /// Fewest requests for a conclusive result.
    pub min_requests: Option<u64>,
    /// Paths that every canary instance must answer with a 2xx to a GET at the end of each step's
    /// window (for example a smoke-test endpoint).
    pub checks: Option<Vec<String>>,
}

/// One notification target.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Notification")]
pub struct RawNotification {
    /// Label used in logs; default: the target's position in the list, from 0.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: Option<String>,
    /// Endpoint that receives a POST per event; `http://` or `https://`.
    #[schemars(required)]
    pub url: Option<String>,
    /// Body format: `json` (default) or `slack` (an incoming webhook's `{"text": ...}`).
    pub format: Option<RawNotifyFormat>,
    /// Events this target receives; default: all of them.
    pub events: Option<Vec<RawEventKind>>,
    /// One extra request header whose value is read from a file on the machine running kube-free.
    pub header: Option<RawNotifyHeader>,
    /// `json` only: file (on the machine running kube-free) holding the key that signs each body
    /// with HMAC-SHA256 (`X-Kube-Free-Signature`, `X-Kube-Free-Timestamp`).
    pub secret_file: Option<String>,
    /// PEM file (on the machine running kube-free) with extra root certificates for `https://`.
    pub ca_file: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "NotifyFormat")]
pub enum RawNotifyFormat {
    #[serde(rename = "json")]
    Json,
    #[serde(rename = "slack")]
    Slack,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(rename = "NotifyEvent")]
pub enum RawEventKind {
    #[serde(rename = "started")]
    Started,
    #[serde(rename = "step")]
    Step,
    #[serde(rename = "paused")]
    Paused,
    #[serde(rename = "promoted")]
    Promoted,
    #[serde(rename = "succeeded")]
    Succeeded,
    #[serde(rename = "failed")]
    Failed,
    #[serde(rename = "quarantined")]
    Quarantined,
    #[serde(rename = "drift_corrected")]
    DriftCorrected,
    #[serde(rename = "sync_failing")]
    SyncFailing,
    #[serde(rename = "recovered")]
    Recovered,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NotifyHeader")]
pub struct RawNotifyHeader {
    /// Header name, e.g. `Authorization`.
    #[schemars(required)]
    pub name: Option<String>,
    /// Absolute path of the file holding the header's value (only its owner may read it).
    #[schemars(required)]
    pub value_file: Option<String>,
}

/// A key whose value takes several shapes: kept as YAML by the deserializer and judged by
/// validation. `S` only describes it in the JSON Schema.
#[derive(Debug, Default)]
pub struct Loose<S>(PhantomData<S>);

impl<'de, S> Deserialize<'de> for Loose<S> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E>(self) -> Result<(), E> {
                Ok(())
            }
        }
        d.deserialize_struct(super::de::LOOSE, &[], V)?;
        Ok(Loose(PhantomData))
    }
}

impl<S: JsonSchema> JsonSchema for Loose<S> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        S::schema_name()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        S::json_schema(generator)
    }
    fn inline_schema() -> bool {
        true
    }
}

/// Schema of `pause`: a duration, or `{}` for "until promoted".
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum PauseSchema {
    For(#[schemars(regex(pattern = DURATION_PATTERN))] String),
    UntilPromoted(EmptyObject),
}

#[derive(Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyObject {}

/// Schema of an `env` value: a text, or a secret file.
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum EnvValueSchema {
    Text(String),
    Secret(SecretFileSchema),
}

#[derive(Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SecretFileSchema {
    /// Absolute path of the file holding the value, on the machine that runs kube-free; only its
    /// owner may access it (chmod 600). Its final line break is not part of the value.
    file: String,
}

/// Schema of `batch`: a host count or a percentage string.
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum BatchSchema {
    Count(#[schemars(range(min = 1))] u32),
    Percent(#[schemars(regex(pattern = "^[0-9]{1,3}%$"))] String),
}
