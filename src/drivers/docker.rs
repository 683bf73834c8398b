//! The container runtime ([`ContainerRuntime`], a [`Runtime`]) for `runtime: { kind: docker }`:
//! each instance is a container named `kf-<env>-<app>-<slot>`, run by the `docker` command (or
//! `podman`, with `cli: podman`) on the app host. Its record is the container itself: labels
//! `kube-free.{env,app,slot,version,commit,port,spec}` say what it is, the engine says whether it
//! runs, so a container removed or restarted by hand is seen as it is. One `ps` + `inspect` per
//! host lists them all. The environment goes through a 0600 env file that lives only while `run`
//! reads it. Commands are built by pure functions; the async functions run them through a
//! [`Transport`].

use super::runtime::{Container, Found, Running, StartSpec};
use super::{run_ok, Cmd, Runtime, RuntimeError, Transport, TransportError};
use crate::names::SlotRef;
use crate::state::InstanceRecord;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pull may take.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// How soon after its start a container that is not running counts as a failed start.
const EXITS_AT_ONCE: Duration = Duration::from_millis(500);

/// The label every container kube-free starts carries (its slot); the others are beside it.
pub const SLOT_LABEL: &str = "kube-free.slot";

/// What `inspect` prints per container: id, name, state, labels, separated by tabs (a real tab:
/// podman would turn `\t` into one, docker would not). Never the environment.
const FORMAT: &str = "{{json .ID}}\t{{json .Name}}\t{{json .State}}\t{{json .Config.Labels}}";

/// Lists every container with kube-free's slot label, running or not: one [`FORMAT`] line each.
/// A container removed between `ps` and `inspect` is left out; any other error of `inspect` fails
/// the listing (never a partial list).
pub fn list_cmd(cli: &str) -> Cmd {
    Cmd::read([
        "sh",
        "-c",
        r#"set -e; ids=$("$1" ps -aq --no-trunc --filter "label=$2"); [ -z "$ids" ] && exit 0; exec 3>&1; err=$("$1" container inspect --format "$3" $ids 2>&1 >&3) && exit 0; if printf '%s\n' "$err" | grep -v '^$' | grep -viq 'no such \(container\|object\)'; then printf '%s\n' "$err" >&2; exit 1; fi"#,
        "kube-free-containers",
        cli,
        SLOT_LABEL,
        FORMAT,
    ])
}

/// One container, by name or id: a [`FORMAT`] line; exit 1 (docker) or 125 (podman) with "no
/// such container" or "no such object" on stderr when there is none.
pub fn inspect_cmd(cli: &str, container: &str) -> Cmd {
    Cmd::read([cli, "container", "inspect", "--format", FORMAT, container])
}

/// The `run` arguments after `run -d --name <name> --env-file <file>`: labels, restart policy,
/// network, image and command.
pub fn run_args(spec: &StartSpec, container: &Container) -> Vec<String> {
    let at = &spec.at;
    let mut args = Vec::new();
    for (key, value) in [
        ("env", at.env.as_str()),
        ("app", &at.app),
        ("slot", &at.slot),
        ("version", &spec.version),
        ("commit", &spec.revision),
        ("port", &spec.port.to_string()),
        ("spec", &spec.spec.to_string()),
    ] {
        args.push("--label".to_owned());
        args.push(format!("kube-free.{key}={value}"));
    }
    args.extend(["--restart".to_owned(), "unless-stopped".to_owned()]);
    if container.host_network {
        args.extend(["--network".to_owned(), "host".to_owned()]);
    } else {
        let port = spec.port;
        args.push("--publish".to_owned());
        args.push(match container.bind {
            None => format!("{port}:{port}"),
            Some(std::net::IpAddr::V4(a)) => format!("{a}:{port}:{port}"),
            Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{port}:{port}"),
        });
    }
    args.push(container.image.clone());
    args.extend(spec.launch.command.iter().cloned());
    args
}

/// Starts a container: writes the env file (0600, from stdin; removed when the script ends, however
/// it ends short of SIGKILL), removes what a killed run or a failed start left under the name (only
/// a container with kube-free's slot label: anything else is in the way, exit 3), runs it
/// detached, prints the id. Exit codes are `run`'s: 125 the engine refused (a port in use, a
/// missing image), 126/127 the command could not be run; the container a failed `run` made is
/// removed.
pub fn start_cmd(cli: &str, name: &str, env_file: &str, run_args: &[String]) -> Cmd {
    let mut words = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        r#"set -e; cli=$1; name=$2; envf=$3; shift 3; trap 'rm -f "$envf"' EXIT; mkdir -p "$(dirname "$envf")"; (umask 077; cat >"$envf"); if slot=$("$cli" container inspect --format "{{index .Config.Labels \"$SLOT\"}}" "$name" 2>/dev/null); then if [ -z "$slot" ] || [ "$slot" = "<no value>" ]; then echo "a container named $name that kube-free did not start is in the way" >&2; exit 3; fi; "$cli" kill "$name" >/dev/null 2>&1 || true; "$cli" rm -f "$name" >/dev/null; fi; set +e; id=$("$cli" run -d --name "$name" --env-file "$envf" "$@"); rc=$?; rm -f "$envf"; [ $rc -eq 0 ] || "$cli" rm -f "$name" >/dev/null 2>&1; printf '%s\n' "$id"; exit $rc"#.replace("$SLOT", SLOT_LABEL),
        "kube-free-run".to_owned(),
        cli.to_owned(),
        name.to_owned(),
        env_file.to_owned(),
    ];
    words.extend(run_args.iter().cloned());
    Cmd::change(words)
}

/// Stops a container gracefully (`stop -t`: SIGTERM, SIGKILL after `grace`), removes it, and
/// checks that it is gone.
pub fn stop_cmd(cli: &str, container: &str, grace: Duration) -> Cmd {
    Cmd::change([
        "sh".to_owned(),
        "-c".to_owned(),
        r#""$1" stop -t "$3" "$2" >/dev/null 2>&1 || true; "$1" rm -f "$2" >/dev/null 2>&1 || true; if out=$("$1" container inspect --format '{{.State.Status}}' "$2" 2>&1); then echo "still there ($out)" >&2; exit 1; fi; if printf '%s\n' "$out" | grep -iq 'no such \(container\|object\)'; then exit 0; fi; echo "$out" >&2; exit 1"#.to_owned(),
        "kube-free-stop".to_owned(),
        cli.to_owned(),
        container.to_owned(),
        grace.as_secs().max(1).to_string(),
    ])
}

/// Pulls an image; with `always` false only when the host does not have it.
pub fn pull_cmd(cli: &str, image: &str, always: bool) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        r#"if [ "$3" = missing ] && "$1" image inspect "$2" >/dev/null 2>&1; then exit 0; fi; "$1" pull "$2" >/dev/null"#,
        "kube-free-pull",
        cli,
        image,
        if always { "always" } else { "missing" },
    ])
}

/// The last `lines` lines a container wrote (its stdout and stderr, each on its own stream), and
/// with `follow` every new one until it is ended.
pub fn logs_cmd(cli: &str, container: &str, lines: u32, follow: bool) -> Cmd {
    let mut argv = vec![
        cli.to_owned(),
        "logs".to_owned(),
        "--tail".to_owned(),
        lines.to_string(),
    ];
    if follow {
        argv.push("--follow".to_owned());
    }
    argv.push(container.to_owned());
    Cmd::read(argv)
}

/// Whether a registry's answer to a pull says the image does not exist, or that its name is not
/// one (the version's fault), as opposed to trouble reaching or using the registry: it does not
/// answer, or refuses a login ("pull access denied … may require 'docker login'", which Docker Hub
/// also says of a repository that does not exist); a later run tries again.
pub fn image_is_missing(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    let missing = [
        "manifest unknown",
        "not found: manifest",
        "name unknown",
        "no such image",
        "invalid reference format",
    ]
    .iter()
    .any(|needle| s.contains(needle));
    let access = [
        "docker login",
        "unauthorized",
        "denied",
        "connection refused",
    ]
    .iter()
    .any(|needle| s.contains(needle));
    missing && !access || s.contains("invalid reference format")
}

/// Whether an engine's error says there is no such container (docker: "No such object", podman:
/// "no such container" / "no such object"), and nothing else.
pub fn no_such_container(stderr: &str) -> bool {
    let lines: Vec<String> = stderr
        .lines()
        .map(str::to_ascii_lowercase)
        .filter(|l| !l.trim().is_empty())
        .collect();
    !lines.is_empty()
        && lines
            .iter()
            .all(|l| l.contains("no such container") || l.contains("no such object"))
}

/// A container as `inspect` tells of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub name: String,
    pub status: String,
    pub pid: u32,
    pub started_at: u64,
    pub labels: BTreeMap<String, String>,
}

impl Seen {
    /// It runs (not exited, created, paused, or restarting after a crash).
    pub fn running(&self) -> bool {
        self.status == "running"
    }

    /// Its label `kube-free.<key>`.
    fn label(&self, key: &str) -> Option<String> {
        self.labels.get(&format!("kube-free.{key}")).cloned()
    }

    /// Its record, from its labels; why not, when they do not make one.
    pub fn record(&self) -> Result<InstanceRecord, String> {
        let label = |key: &str| {
            self.label(key)
                .ok_or_else(|| format!("container {} has no label kube-free.{key}", self.name))
        };
        Ok(InstanceRecord {
            env: label("env")?,
            app: label("app")?,
            slot: label("slot")?,
            version: label("version")?,
            revision: label("commit")?,
            port: label("port")?.parse().map_err(|_| {
                format!(
                    "container {}: label kube-free.port is not a port",
                    self.name
                )
            })?,
            pid: self.pid,
            start_ticks: 0,
            started_at: self.started_at,
            argv: Vec::new(),
            container: Some(self.id.clone()),
            // A label that is not a spec (written before kube-free kept one): unknown, taken
            // as the one wanted.
            spec: self.label("spec").and_then(|s| s.parse().ok()),
        })
    }

    /// The slot its labels name, when they name one: (env, app, slot).
    fn slot(&self) -> Option<(String, String, String)> {
        Some((self.label("env")?, self.label("app")?, self.label("slot")?))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct State {
    #[serde(default)]
    status: String,
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    started_at: String,
}

/// One [`FORMAT`] line.
pub fn parse_line(line: &str) -> Result<Seen, String> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [id, name, state, labels] = fields[..] else {
        return Err(format!("unexpected inspect line {line:?}"));
    };
    let json = |text: &str| -> Result<serde_json::Value, String> {
        serde_json::from_str(text).map_err(|e| format!("{e} in {text:?}"))
    };
    let text = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let state: State =
        serde_json::from_str(state).map_err(|e| format!("container state: {e} in {state:?}"))?;
    let labels: Option<BTreeMap<String, String>> =
        serde_json::from_str(labels).map_err(|e| format!("container labels: {e}"))?;
    Ok(Seen {
        id: text(json(id)?),
        // docker says `/name`, podman `name`.
        name: text(json(name)?).trim_start_matches('/').to_owned(),
        status: state.status,
        pid: state.pid,
        started_at: parse_rfc3339(&state.started_at).unwrap_or(0),
        labels: labels.unwrap_or_default(),
    })
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2026-11-30T19:12:14.962Z`,
/// `…+01:00`); `None` when it is not one (a container never started says `0001-01-01T00:00:00Z`,
/// which gives `None` too).
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // The offset: after the fraction, `Z` or `±hh:mm`.
    let rest = text[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match rest.as_bytes().first()? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset;
    u64::try_from(secs).ok().filter(|s| *s > 0)
}

/// The container runtime of one host: its transport, the command it runs (`docker` or
/// `podman`) and the host's `state_dir` (where env files live while `run` reads them).
pub struct ContainerRuntime {
    transport: Arc<dyn Transport>,
    cli: &'static str,
    state_dir: String,
    /// A host where no app runs containers now: one that cannot list them has none.
    lenient: bool,
}

impl ContainerRuntime {
    pub fn new(transport: Arc<dyn Transport>, cli: &'static str, state_dir: &str) -> Self {
        ContainerRuntime {
            transport,
            cli,
            state_dir: state_dir.to_owned(),
            lenient: false,
        }
    }

    /// For a host where no app of the desired state runs containers (to find those an app left
    /// that runs processes now): when the engine cannot be asked, it has none.
    pub fn lenient(mut self) -> Self {
        self.lenient = true;
        self
    }

    fn t(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    /// The container `name_or_id`, or `None` when the engine has no such container.
    async fn inspect(&self, name_or_id: &str) -> Result<Option<Seen>, RuntimeError> {
        let cmd = inspect_cmd(self.cli, name_or_id);
        let out = self.t().run(&cmd, TIMEOUT).await?;
        if !out.success() {
            if no_such_container(&out.stderr_text()) {
                return Ok(None);
            }
            return Err(self.failed(&cmd, &out).into());
        }
        let text = out.stdout_text();
        parse_line(text.trim_end_matches('\n'))
            .map(Some)
            .map_err(|error| self.failed_with(&cmd, error).into())
    }

    fn failed(&self, cmd: &Cmd, out: &super::Output) -> TransportError {
        TransportError::Failed {
            host: self.t().host().to_owned(),
            cmd: cmd.to_string(),
            status: out.status,
            stderr: out.stderr_text(),
        }
    }

    fn failed_with(&self, cmd: &Cmd, stderr: String) -> TransportError {
        TransportError::Failed {
            host: self.t().host().to_owned(),
            cmd: cmd.to_string(),
            status: Some(0),
            stderr,
        }
    }

    fn host_name(&self) -> String {
        self.t().host().to_owned()
    }
}

#[async_trait::async_trait]
impl Runtime for ContainerRuntime {
    fn host(&self) -> &str {
        self.t().host()
    }

    async fn instances(&self) -> Result<Vec<Found>, RuntimeError> {
        let cmd = list_cmd(self.cli);
        let out = match run_ok(self.t(), &cmd, TIMEOUT).await {
            Err(e) if self.lenient && !e.lost_contact() => {
                tracing::debug!(host = self.t().host(), cli = self.cli, error = %e, "no containers to list");
                return Ok(Vec::new());
            }
            out => out?,
        };
        let mut found = Vec::new();
        for line in out.stdout_text().lines().filter(|l| !l.trim().is_empty()) {
            let seen = parse_line(line).map_err(|e| self.failed_with(&cmd, e))?;
            found.push(match (seen.record(), seen.slot()) {
                (Ok(record), _) => Found::Record {
                    alive: seen.running(),
                    record,
                },
                // Its slot is known but not what it runs (labels changed by hand): a container
                // of an unknown version, so that nothing takes the slot from under it unseen.
                (Err(error), Some((env, app, slot))) => {
                    tracing::warn!(host = self.t().host(), container = seen.name, error, "a container of kube-free's without all of its labels: its version is unknown");
                    Found::Record {
                        alive: seen.running(),
                        record: InstanceRecord {
                            env,
                            app,
                            slot,
                            version: crate::state::UNKNOWN_VERSION.to_owned(),
                            revision: String::new(),
                            port: 0,
                            pid: seen.pid,
                            start_ticks: 0,
                            started_at: seen.started_at,
                            argv: Vec::new(),
                            container: Some(seen.id.clone()),
                            spec: None,
                        },
                    }
                }
                (Err(error), None) => Found::Unreadable {
                    path: format!("container {}", seen.name),
                    slot: None,
                    error,
                },
            });
        }
        Ok(found)
    }

    async fn instance(&self, at: &SlotRef) -> Result<Option<InstanceRecord>, RuntimeError> {
        Ok(self
            .inspect(&at.container())
            .await?
            .and_then(|seen| seen.record().ok())
            .filter(|r| r.env == at.env && r.app == at.app && r.slot == at.slot))
    }

    /// The container of `record` runs (the very container: by id).
    async fn is_alive(&self, record: &InstanceRecord) -> Result<bool, RuntimeError> {
        let Some(id) = &record.container else {
            return Ok(false);
        };
        Ok(self.inspect(id).await?.is_some_and(|seen| seen.running()))
    }

    /// A container's record is its labels, which cannot be torn: nothing to recover.
    async fn recover(&self, _at: &SlotRef) -> Result<Option<Running>, RuntimeError> {
        Ok(None)
    }

    /// Labels cannot be rewritten; a container's record is always as it was started.
    async fn write_record(&self, _record: &InstanceRecord) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn start(&self, spec: &StartSpec) -> Result<InstanceRecord, RuntimeError> {
        let at = &spec.at;
        let host = self.host_name();
        let name = at.container();
        let Some(container) = &spec.launch.container else {
            return Err(RuntimeError::NotMine {
                host,
                runtime: self.cli,
                slot: at.slot.clone(),
            });
        };
        let env = spec.launch.env_lines(&at.app)?;
        let env_file = format!(
            "{}/{}.env",
            crate::state::app_dir(&self.state_dir, &at.env, &at.app),
            at.slot
        );
        // The container did not start or stopped at once: the version's fault, with what it said.
        let exited = |host, log, tail| RuntimeError::ExitedAtOnce {
            host,
            command: format!("{} run {name}", self.cli),
            log,
            tail,
        };
        let cmd = start_cmd(self.cli, &name, &env_file, &run_args(spec, container))
            .with_stdin(env.into_bytes());
        let out = self.t().run(&cmd, TIMEOUT).await?;
        let stderr = out.stderr_text().trim().to_owned();
        match out.status {
            Some(0) => {}
            Some(3) => return Err(RuntimeError::InTheWay { host, name }),
            Some(126 | 127) => return Err(exited(host, format!("`{} run`", self.cli), stderr)),
            _ if image_is_missing(&stderr) => {
                return Err(RuntimeError::ImageMissing {
                    host,
                    image: container.image.clone(),
                    error: stderr,
                })
            }
            _ => {
                return Err(RuntimeError::Run {
                    host,
                    cli: self.cli,
                    name,
                    error: stderr,
                })
            }
        }
        let id = out.stdout_text().trim().to_owned();
        // A command that cannot run (a bad flag, a missing file) exits at once: give it a moment.
        tokio::time::sleep(EXITS_AT_ONCE).await;
        let seen = self.inspect(&id).await?;
        match seen {
            Some(seen) if seen.running() => seen.record().map_err(|e| {
                RuntimeError::Transport(self.failed_with(&inspect_cmd(self.cli, &id), e))
            }),
            _ => {
                let tail = self.logs(at, 20).await.map(|(_, t)| t).unwrap_or_default();
                // It never got traffic: remove it, so that nothing is left behind.
                let _ = self
                    .t()
                    .run(&stop_cmd(self.cli, &id, Duration::from_secs(1)), TIMEOUT)
                    .await;
                Err(exited(host, format!("`{} logs {name}`", self.cli), tail))
            }
        }
    }

    /// `stop -t <stop_timeout>`, then `rm -f`; what is not there is stopped already.
    async fn stop(
        &self,
        record: &InstanceRecord,
        stop_timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let Some(id) = record.container.clone() else {
            return Err(RuntimeError::NotMine {
                host: self.host_name(),
                runtime: self.cli,
                slot: record.slot.clone(),
            });
        };
        let cmd = stop_cmd(self.cli, &id, stop_timeout);
        let out = self.t().run(&cmd, stop_timeout + TIMEOUT).await?;
        if out.success() {
            Ok(())
        } else {
            Err(RuntimeError::NotRemoved {
                host: self.host_name(),
                cli: self.cli,
                container: id,
                error: out.stderr_text().trim().to_owned(),
            })
        }
    }

    /// stdout and stderr together, as they came.
    async fn logs(&self, at: &SlotRef, lines: u32) -> Result<(String, String), RuntimeError> {
        let (source, cmd) = self.logs_cmd(at, lines, false);
        let out = run_ok(self.t(), &cmd, TIMEOUT).await?;
        Ok((
            source,
            format!("{}{}", out.stdout_text(), out.stderr_text()),
        ))
    }

    fn logs_cmd(&self, at: &SlotRef, lines: u32, follow: bool) -> (String, Cmd) {
        let name = at.container();
        let cmd = logs_cmd(self.cli, &name, lines, follow);
        (format!("`{} logs {name}`", self.cli), cmd)
    }

    async fn pull(&self, image: &str, always: bool) -> Result<(), RuntimeError> {
        let out = self
            .t()
            .run(&pull_cmd(self.cli, image, always), PULL_TIMEOUT)
            .await?;
        if out.success() {
            return Ok(());
        }
        let (host, image, error) = (
            self.host_name(),
            image.to_owned(),
            out.stderr_text().trim().to_owned(),
        );
        Err(if image_is_missing(&error) {
            RuntimeError::ImageMissing { host, image, error }
        } else {
            RuntimeError::Pull { host, image, error }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::runtime::Launch;

    fn spec(container: Option<Container>) -> StartSpec {
        StartSpec {
            at: SlotRef::new("prod", "api", "web-1", "blue"),
            version: "1.2".into(),
            revision: "abc".into(),
            port: 8000,
            launch: Launch {
                env: vec!["PORT=8000".into(), "TOKEN=s3cret".into()],
                command: vec!["--listen".into(), "0.0.0.0:8000".into()],
                container,
            },
            spec: crate::desired::spec::Spec::example(),
            stop_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn run_arguments_are_exact() {
        let c = Container {
            image: "reg/api:1.2".into(),
            host_network: false,
            bind: None,
        };
        let s = spec(Some(c.clone()));
        let digest = s.spec.to_string();
        assert_eq!(
            run_args(&s, &c).join(" "),
            format!("--label kube-free.env=prod --label kube-free.app=api --label kube-free.slot=blue --label kube-free.version=1.2 --label kube-free.commit=abc --label kube-free.port=8000 --label kube-free.spec={digest} --restart unless-stopped --publish 8000:8000 reg/api:1.2 --listen 0.0.0.0:8000")
        );
        let v6 = Container {
            bind: Some("::1".parse().unwrap()),
            ..c.clone()
        };
        assert!(run_args(&s, &v6).contains(&"[::1]:8000:8000".to_owned()));
        let host = Container {
            host_network: true,
            ..c.clone()
        };
        let args = run_args(&s, &host).join(" ");
        assert!(args.contains("--network host reg/api:1.2"), "{args}");
        assert!(!args.contains("--publish"), "{args}");
        // No value of the environment is on the command line.
        let cmd = start_cmd(
            "docker",
            "kf-prod-api-blue",
            "/s/prod/api/blue.env",
            &run_args(&s, &c),
        )
        .with_stdin(s.launch.env_lines("api").unwrap().into_bytes());
        assert!(!cmd.to_string().contains("s3cret"), "{cmd}");
        assert!(!format!("{cmd:?}").contains("s3cret"));
        assert!(!format!("{:?}", s.launch).contains("s3cret"));
        assert_eq!(
            cmd.stdin.as_deref(),
            Some(&b"PORT=8000\nTOKEN=s3cret\n"[..])
        );
    }

    #[test]
    fn env_values_with_line_breaks_are_refused() {
        let mut launch = spec(None).launch;
        launch.env.push("BAD=a\nb".into());
        let err = launch.env_lines("api").unwrap_err();
        assert!(
            matches!(&err, RuntimeError::BadEnvValue { name, .. } if name == "BAD"),
            "{err}"
        );
        assert!(!err.to_string().contains("a\nb"), "{err}");
    }

    #[test]
    fn inspect_lines_of_docker_and_podman_parse() {
        let docker = "\"0123abcd\"\t\"/kf-prod-api-blue\"\t{\"Status\":\"running\",\"Running\":true,\"Pid\":4242,\"StartedAt\":\"2026-11-30T19:12:14.962Z\"}\t{\"kube-free.env\":\"prod\",\"kube-free.app\":\"api\",\"kube-free.slot\":\"blue\",\"kube-free.version\":\"1.2\",\"kube-free.commit\":\"abc\",\"kube-free.port\":\"8000\"}";
        let seen = parse_line(docker).unwrap();
        assert_eq!(seen.name, "kf-prod-api-blue");
        assert!(seen.running());
        let record = seen.record().unwrap();
        assert_eq!(
            (record.version.as_str(), record.port, record.pid),
            ("1.2", 8000, 4242)
        );
        assert_eq!(record.container.as_deref(), Some("0123abcd"));
        assert_eq!(record.started_at, 1_796_065_934);
        let podman = docker
            .replace("/kf-", "kf-")
            .replace("\"running\"", "\"stopped\"")
            .replace("19:12:14.962Z", "20:12:14.962+01:00");
        let seen = parse_line(&podman).unwrap();
        assert_eq!(seen.name, "kf-prod-api-blue");
        assert!(!seen.running());
        assert_eq!(seen.started_at, 1_796_065_934);
        // Labels that do not make a record: reported with the slot they name.
        let torn = docker.replace(",\"kube-free.port\":\"8000\"", "");
        let seen = parse_line(&torn).unwrap();
        assert!(seen.record().unwrap_err().contains("kube-free.port"));
        assert_eq!(
            seen.slot(),
            Some(("prod".into(), "api".into(), "blue".into()))
        );
        assert!(parse_line("garbage").is_err());
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("1970-01-02T00:00:00Z"), Some(86_400));
    }

    #[test]
    fn pull_errors_tell_a_missing_image_from_a_registry_in_trouble() {
        assert!(image_is_missing("Error response from daemon: manifest for 127.0.0.1:5000/kf-demo:9 not found: manifest unknown: manifest unknown"));
        // Docker Hub says this of a login that failed too: tried again, not the version's fault.
        assert!(!image_is_missing(
            "Error response from daemon: pull access denied for kf-demo, repository does not exist or may require 'docker login'"
        ));
        assert!(image_is_missing(
            "Error response from daemon: invalid reference format"
        ));
        assert!(no_such_container("Error: No such object: kf-a-b-blue\n"));
        assert!(no_such_container(
            "Error: inspecting object: no such container \"kf-a-b-blue\""
        ));
        assert!(!no_such_container(
            "Error: reading storage: open /var/lib/x: no such file or directory"
        ));
        assert!(!no_such_container(""));
        assert!(!image_is_missing("Error response from daemon: Get \"http://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused"));
        assert!(!image_is_missing("Error response from daemon: Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io: no such host"));
    }

    #[test]
    fn commands_are_exact() {
        assert_eq!(
            pull_cmd("docker", "reg/api:1", false).to_string(),
            r#"sh -c 'if [ "$3" = missing ] && "$1" image inspect "$2" >/dev/null 2>&1; then exit 0; fi; "$1" pull "$2" >/dev/null' kube-free-pull docker reg/api:1 missing"#
        );
        assert_eq!(
            inspect_cmd("podman", "kf-a-b-blue").argv,
            [
                "podman",
                "container",
                "inspect",
                "--format",
                FORMAT,
                "kf-a-b-blue"
            ]
        );
        assert_eq!(
            logs_cmd("docker", "kf-a-b-blue", 5, true).to_string(),
            "docker logs --tail 5 --follow kf-a-b-blue"
        );
        assert_eq!(
            logs_cmd("podman", "kf-a-b-blue", 20, false).to_string(),
            "podman logs --tail 20 kf-a-b-blue"
        );
        let stop = stop_cmd("docker", "0123", Duration::from_millis(300));
        assert_eq!(stop.argv.last().map(String::as_str), Some("1"));
        assert!(stop.changes);
        assert!(!list_cmd("docker").changes);
        assert_eq!(
            SlotRef::new("prod", "api", "h", "green").container(),
            "kf-prod-api-green"
        );
    }
}
