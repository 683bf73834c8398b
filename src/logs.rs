//! `kube-free logs`: which logs of an app's instances to read, and how their lines reach the user.
//! The request (environment, app, `--host`, `--slot`) is checked against the desired state before
//! any host is contacted ([`wanted`]); the sources are then chosen from what runs there
//! ([`sources`]: every slot with an instance, or the slot named); their lines are printed each log
//! after the other under a header, or every log followed at once with its name before each line
//! ([`relay`]). The commands are the runtimes' ([`Runtime::logs_cmd`]), streamed by the hosts'
//! transports ([`Transport::stream`]). Changes nothing anywhere; prints only to the writers given.
//!
//! [`Runtime::logs_cmd`]: crate::drivers::Runtime::logs_cmd
//! [`Transport::stream`]: crate::drivers::Transport::stream

use crate::desired::DesiredState;
use crate::drivers::{Cmd, Line, RuntimeError, Stream, TransportError};
use crate::error::Error;
use crate::names::SlotRef;
use crate::reconcile::World;
use std::collections::BTreeSet;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Longest a log that is read (not followed) may send nothing before its command counts as hung.
pub const IDLE: Duration = Duration::from_secs(60);

/// The slots a request names, checked against the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// In host order (as the environment lists its hosts), then slot order.
    pub slots: Vec<SlotRef>,
    /// Whether `--slot` named the slot: then it is read even without an instance there.
    pub named: bool,
}

impl Wanted {
    /// The hosts to connect to.
    pub fn hosts(&self) -> BTreeSet<String> {
        self.slots.iter().map(|at| at.host.clone()).collect()
    }
}

/// The slots of `app` in `env` to look at: on `host` (else every host of the environment), `slot`
/// (else both). Fails when the environment does not deploy the app, or `host` or `slot` is not
/// one of its own. `env` and `app` are known names (checked on loading).
pub fn wanted(
    desired: &DesiredState,
    env: &str,
    app: &str,
    host: Option<&str>,
    slot: Option<&str>,
) -> Result<Wanted, Error> {
    let environment = &desired.environments[env];
    let deployment = desired.deployment(env, app).ok_or_else(|| Error::NotIn {
        what: "app",
        name: app.to_owned(),
        place: format!("environment {env:?}"),
        known: environment.apps.keys().cloned().collect(),
    })?;
    let hosts: Vec<&String> = match host {
        None => environment.hosts.iter().collect(),
        Some(h) => vec![environment
            .hosts
            .iter()
            .find(|known| *known == h)
            .ok_or_else(|| Error::NotIn {
                what: "host",
                name: h.to_owned(),
                place: format!("environment {env:?}"),
                known: environment.hosts.clone(),
            })?],
    };
    let slots: Vec<&str> = match slot {
        None => deployment.slots.iter().map(|s| s.name.as_str()).collect(),
        Some(s) => vec![deployment
            .slots
            .iter()
            .find(|known| known.name == s)
            .map(|known| known.name.as_str())
            .ok_or_else(|| Error::NotIn {
                what: "slot",
                name: s.to_owned(),
                place: format!("{env}/{app}"),
                known: deployment.slots.iter().map(|s| s.name.clone()).collect(),
            })?],
    };
    Ok(Wanted {
        slots: hosts
            .iter()
            .flat_map(|h| slots.iter().map(move |s| SlotRef::new(env, app, h, s)))
            .collect(),
        named: slot.is_some(),
    })
}

/// What the instance record of a slot says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instance {
    /// No record.
    None,
    /// A record of this version, and whether its instance runs.
    Record { version: String, alive: bool },
}

/// One log to read: its slot, what runs there, where the log is (for people) and the command that
/// reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub at: SlotRef,
    pub instance: Instance,
    pub place: String,
    pub cmd: Cmd,
}

impl Source {
    /// `host/slot`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.at.host, self.at.slot)
    }

    /// `==> host/slot (version V, PLACE) <==`, as `tail` heads each file.
    pub fn header(&self) -> String {
        let what = match &self.instance {
            Instance::None => "no instance".to_owned(),
            Instance::Record {
                version,
                alive: true,
            } => format!("version {version}"),
            Instance::Record {
                version,
                alive: false,
            } => format!("version {version}, not running"),
        };
        format!("==> {} ({what}, {}) <==", self.name(), self.place)
    }
}

/// The logs to read of `wanted`: each slot with an instance record (running or not), and a named
/// slot even without one; the commands read the last `lines` lines, then follow with `follow`.
pub async fn sources(
    world: &Arc<World>,
    wanted: &Wanted,
    lines: u32,
    follow: bool,
) -> Result<Vec<Source>, LogsError> {
    let mut observing = JoinSet::new();
    for (i, at) in wanted.slots.iter().enumerate() {
        let (world, at) = (world.clone(), at.clone());
        observing.spawn(async move {
            let runtime = world.runtime(&at)?;
            let instance = match runtime.instance(&at).await? {
                None => Instance::None,
                Some(record) => Instance::Record {
                    alive: runtime.is_alive(&record).await?,
                    version: record.version,
                },
            };
            let (place, cmd) = runtime.logs_cmd(&at, lines, follow);
            Ok::<_, RuntimeError>((
                i,
                Source {
                    at,
                    instance,
                    place,
                    cmd,
                },
            ))
        });
    }
    let mut found = Vec::new();
    while let Some(done) = observing.join_next().await {
        found.push(done.expect("observing a slot does not panic")?);
    }
    found.sort_by_key(|(i, _)| *i);
    Ok(found
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| wanted.named || s.instance != Instance::None)
        .collect())
}

/// What a source's command did.
pub type End = Result<Option<i32>, TransportError>;

/// How [`relay`] ended.
#[derive(Debug)]
pub enum Relayed {
    /// Every command ended: what that means, by source.
    Ended(Vec<Verdict>),
    /// `stop` came first; the commands were ended.
    Stopped,
}

enum Event {
    Line(usize, Line),
    End(usize, End),
}

/// Runs the command of every source at once on its host and writes each line as it comes, stdout
/// lines to `out` and stderr lines to `err`, after `host/slot | ` with `prefix`; until every command
/// ended or `stop` resolves. What the end of each command means ([`judge`]) is said on `err` as it
/// comes, unless it read its log. With `idle`, a command that sends nothing for that long ends as
/// timed out.
pub async fn relay(
    world: &Arc<World>,
    sources: &[&Source],
    prefix: bool,
    idle: Option<Duration>,
    stop: impl Future<Output = ()>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Relayed, Error> {
    let (events, mut received) = mpsc::channel(256);
    let mut streams = JoinSet::new();
    for (i, source) in sources.iter().enumerate() {
        let (world, events) = (world.clone(), events.clone());
        let (host, cmd) = (source.at.host.clone(), source.cmd.clone());
        streams.spawn(async move {
            let (to, mut lines) = mpsc::channel(64);
            let forward = async {
                while let Some(line) = lines.recv().await {
                    if events.send(Event::Line(i, line)).await.is_err() {
                        break;
                    }
                }
            };
            let (end, ()) = tokio::join!(world.host(&host).stream(&cmd, to), forward);
            let _ = events.send(Event::End(i, end)).await;
        });
    }
    drop(events);
    let prefixes: Vec<Vec<u8>> = sources
        .iter()
        .map(|s| match prefix {
            true => format!("{} | ", s.name()).into_bytes(),
            false => Vec::new(),
        })
        .collect();
    let mut verdicts: Vec<Option<Verdict>> = sources.iter().map(|_| None).collect();
    // Judges the end of source `i`, says it unless it read its log.
    let ended = |i: usize, end: End, err: &mut dyn Write| -> std::io::Result<Verdict> {
        let verdict = judge(sources[i], &end);
        if let Verdict::NoLog(said) | Verdict::Failed(said) = &verdict {
            writeln!(err, "{said}")?;
        }
        Ok(verdict)
    };
    tokio::pin!(stop);
    loop {
        let next = async {
            match idle {
                Some(limit) => tokio::time::timeout(limit, received.recv()).await.ok(),
                None => Some(received.recv().await),
            }
        };
        let event = tokio::select! {
            biased;
            () = &mut stop => return Ok(Relayed::Stopped),
            event = next => event,
        };
        match event {
            // Nothing for `idle`: the commands still running count as hung.
            None => {
                let limit = idle.expect("only with a limit");
                for (i, source) in sources.iter().enumerate() {
                    if verdicts[i].is_none() {
                        let end = Err(TransportError::Timeout {
                            host: source.at.host.clone(),
                            cmd: source.cmd.to_string(),
                            timeout: limit,
                        });
                        verdicts[i] = Some(ended(i, end, err)?);
                    }
                }
                break;
            }
            Some(None) => break,
            Some(Some(Event::Line(i, line))) => {
                let to: &mut dyn Write = match line.stream {
                    Stream::Stdout => &mut *out,
                    Stream::Stderr => &mut *err,
                };
                to.write_all(&prefixes[i])?;
                to.write_all(&line.text)?;
                to.write_all(b"\n")?;
            }
            Some(Some(Event::End(i, end))) => verdicts[i] = Some(ended(i, end, err)?),
        }
    }
    Ok(Relayed::Ended(
        verdicts
            .into_iter()
            .map(|v| v.expect("every command ended"))
            .collect(),
    ))
}

/// What the end of a source's command means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It read the log.
    Read,
    /// A named slot has no instance and its log could not be read: said, not an error.
    NoLog(String),
    /// It could not read the log of an instance.
    Failed(String),
}

/// The verdict on `end`, the end of `source`'s command.
pub fn judge(source: &Source, end: &End) -> Verdict {
    let why = match end {
        Ok(Some(0)) => return Verdict::Read,
        Ok(Some(status)) => format!("`{}` exited {status}", source.cmd),
        Ok(None) => format!("`{}` was killed by a signal", source.cmd),
        Err(e) => crate::error::chain(e),
    };
    match source.instance {
        Instance::None => Verdict::NoLog(format!(
            "{}: no instance, and no log to read at {} ({why})",
            source.name(),
            source.place
        )),
        Instance::Record { .. } => Verdict::Failed(format!(
            "{}: cannot read {}: {why}",
            source.name(),
            source.place
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot read {} of {total} logs: {}", .failed.len(), .failed.join(", "))]
    Unread { failed: Vec<String>, total: usize },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::local::LocalTransport;

    fn desired() -> DesiredState {
        crate::testing::two_hosts("blue-green")
    }

    #[test]
    fn the_slots_asked_for_are_checked_against_the_desired_state() {
        let d = desired();
        let all = wanted(&d, "prod", "api", None, None).unwrap();
        let names: Vec<String> = all
            .slots
            .iter()
            .map(|at| format!("{}/{}", at.host, at.slot))
            .collect();
        assert_eq!(
            names,
            ["web-1/blue", "web-1/green", "web-2/blue", "web-2/green"]
        );
        assert!(!all.named);
        assert_eq!(all.hosts(), ["web-1".to_owned(), "web-2".to_owned()].into());
        let one = wanted(&d, "prod", "api", Some("web-2"), Some("green")).unwrap();
        assert_eq!(one.slots, [SlotRef::new("prod", "api", "web-2", "green")]);
        assert!(one.named);
        assert_eq!(one.hosts(), ["web-2".to_owned()].into());

        for (host, slot, says) in [
            (
                Some("lb-1"),
                None,
                r#"host "lb-1" is not in environment "prod" (it has: web-1, web-2)"#,
            ),
            (
                Some("web-9"),
                None,
                r#"host "web-9" is not in environment "prod" (it has: web-1, web-2)"#,
            ),
            (
                None,
                Some("red"),
                r#"slot "red" is not in prod/api (it has: blue, green)"#,
            ),
        ] {
            let e = wanted(&d, "prod", "api", host, slot).unwrap_err();
            assert_eq!(e.to_string(), says);
            assert_eq!(e.exit(), crate::Exit::BadInput);
        }
        let yaml = crate::testing::two_hosts_yaml("blue-green").replace(
            "environments:",
            "  web:\n    runtime: { kind: process, command: \"web {port}\" }\n    slots: { blue: 9000, green: 9001 }\nenvironments:",
        );
        let e = wanted(&crate::testing::desired(&yaml), "prod", "web", None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"app "web" is not in environment "prod" (it has: api)"#
        );
    }

    fn source(host: &str, slot: &str, instance: Instance, cmd: Cmd) -> Source {
        Source {
            at: SlotRef::new("prod", "api", host, slot),
            instance,
            place: format!("/s/prod/api/{slot}.log"),
            cmd,
        }
    }

    #[test]
    fn headers_say_what_runs_and_where_the_log_is() {
        let running = Instance::Record {
            version: "2.0".into(),
            alive: true,
        };
        let cmd = Cmd::read(["true"]);
        assert_eq!(
            source("web-1", "blue", running, cmd.clone()).header(),
            "==> web-1/blue (version 2.0, /s/prod/api/blue.log) <=="
        );
        let dead = Instance::Record {
            version: "1.0".into(),
            alive: false,
        };
        assert_eq!(
            source("web-1", "green", dead, cmd.clone()).header(),
            "==> web-1/green (version 1.0, not running, /s/prod/api/green.log) <=="
        );
        assert_eq!(
            source("web-2", "blue", Instance::None, cmd).header(),
            "==> web-2/blue (no instance, /s/prod/api/blue.log) <=="
        );
    }

    /// A world whose app hosts run commands on this machine.
    fn local_world() -> Arc<World> {
        let d = desired();
        let mut drivers = crate::drivers::fake::Fleet::new(&d).drivers();
        for h in ["web-1", "web-2"] {
            let t: Arc<dyn crate::drivers::Transport> = Arc::new(LocalTransport::new(h));
            drivers.hosts.insert(h.to_owned(), t);
        }
        Arc::new(World::new(d, "c0ffee".into(), drivers))
    }

    fn sh(script: &str) -> Cmd {
        Cmd::read(["sh", "-c", script])
    }

    fn running() -> Instance {
        Instance::Record {
            version: "2.0".into(),
            alive: true,
        }
    }

    #[tokio::test]
    async fn every_source_is_relayed_with_its_name_and_stderr_goes_to_stderr() {
        let world = local_world();
        let a = source(
            "web-1",
            "blue",
            running(),
            sh("echo one; echo oops >&2; echo two"),
        );
        let b = source("web-2", "green", running(), sh("sleep 0.2; printf last"));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let relayed = relay(
            &world,
            &[&a, &b],
            true,
            None,
            std::future::pending(),
            &mut out,
            &mut err,
        )
        .await
        .unwrap();
        let Relayed::Ended(ends) = relayed else {
            panic!("not stopped")
        };
        assert_eq!(ends, [Verdict::Read, Verdict::Read]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "web-1/blue | one\nweb-1/blue | two\nweb-2/green | last\n"
        );
        assert_eq!(String::from_utf8(err).unwrap(), "web-1/blue | oops\n");
    }

    #[tokio::test]
    async fn a_stop_ends_the_commands_and_a_hung_read_times_out() {
        let world = local_world();
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "echo $$ > {}; echo started; exec sleep 30",
            pid_file.display()
        );
        let a = source("web-1", "blue", running(), sh(&script));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let waiting = async {
            while !pid_file.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = stop.send(());
        };
        let only = [&a];
        let (relayed, ()) = tokio::join!(
            relay(
                &world,
                &only,
                false,
                None,
                async {
                    let _ = stopped.await;
                },
                &mut out,
                &mut err,
            ),
            waiting
        );
        assert!(matches!(relayed.unwrap(), Relayed::Stopped));
        assert_eq!(String::from_utf8(out).unwrap(), "started\n");
        // The command is ended once the relay is gone (its task is aborted, which kills it).
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let proc = format!("/proc/{}", pid.trim());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&proc).exists()
            && !std::fs::read_to_string(format!("{proc}/stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            assert!(std::time::Instant::now() < deadline, "{proc} still runs");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let relayed = relay(
            &world,
            &[&a],
            false,
            Some(Duration::from_millis(300)),
            std::future::pending(),
            &mut out,
            &mut err,
        )
        .await
        .unwrap();
        let Relayed::Ended(ends) = relayed else {
            panic!("no stop")
        };
        let said =
            "web-1/blue: cannot read /s/prod/api/blue.log: host \"web-1\": `sh -c 'echo $$ > ";
        assert!(
            matches!(&ends[0], Verdict::Failed(m) if m.starts_with(said) && m.ends_with("did not finish within 300ms")),
            "{ends:?}"
        );
        let err = String::from_utf8(err).unwrap();
        assert!(err.starts_with(said), "said on stderr as it came: {err}");
    }

    #[test]
    fn ends_are_judged_by_what_runs_in_the_slot() {
        let cmd = Cmd::read(["tail", "-n", "1", "/s/prod/api/blue.log"]);
        let read = source("web-1", "blue", running(), cmd.clone());
        assert_eq!(judge(&read, &Ok(Some(0))), Verdict::Read);
        assert_eq!(
            judge(&read, &Ok(Some(1))),
            Verdict::Failed("web-1/blue: cannot read /s/prod/api/blue.log: `tail -n 1 /s/prod/api/blue.log` exited 1".into())
        );
        assert_eq!(
            judge(&read, &Ok(None)),
            Verdict::Failed("web-1/blue: cannot read /s/prod/api/blue.log: `tail -n 1 /s/prod/api/blue.log` was killed by a signal".into())
        );
        let empty = source("web-1", "blue", Instance::None, cmd);
        assert_eq!(judge(&empty, &Ok(Some(0))), Verdict::Read);
        assert_eq!(
            judge(&empty, &Ok(Some(1))),
            Verdict::NoLog("web-1/blue: no instance, and no log to read at /s/prod/api/blue.log (`tail -n 1 /s/prod/api/blue.log` exited 1)".into())
        );
    }

    #[tokio::test]
    async fn sources_are_the_slots_with_an_instance_or_the_one_named() {
        let d = desired();
        let fleet = crate::drivers::fake::Fleet::new(&d);
        let world = Arc::new(World::new(d.clone(), "c0ffee".into(), fleet.drivers()));
        let at = SlotRef::new("prod", "api", "web-2", "green");
        fleet.place(&at, "2.0", 100, crate::observed::Admin::Ready);
        let all = wanted(&d, "prod", "api", None, None).unwrap();
        let found = sources(&world, &all, 7, true).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].at, at);
        assert_eq!(
            found[0].header(),
            "==> web-2/green (version 2.0, fake.log) <=="
        );
        assert_eq!(found[0].cmd.to_string(), "fake-logs green 7 --follow");
        let named = wanted(&d, "prod", "api", Some("web-1"), Some("blue")).unwrap();
        let found = sources(&world, &named, 7, false).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].instance, Instance::None);
        assert_eq!(found[0].cmd.to_string(), "fake-logs blue 7");
    }
}
