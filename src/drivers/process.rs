//! The process runtime: starts an app instance detached from the session that started it (its own
//! session, output to a log file), tells whether a recorded pid is still that very process, and stops
//! it (SIGTERM, then SIGKILL after `stop_timeout`). Commands are built by pure functions; the async
//! functions run them through a [`Transport`].

use super::{run_ok, Cmd, Output, Transport, TransportError};
use crate::state::InstanceRecord;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);
/// How soon after its start a process that exits counts as a failed start.
const EXITS_AT_ONCE: Duration = Duration::from_millis(150);

/// Starts argv in its own session with output appended to `log`, in `/`, writes `PID START_TICKS` to
/// `pid_file` (atomically, before anything else can happen to the caller) and prints the pid. Every
/// value is a positional parameter; the script text is constant.
pub fn start_cmd(dir: &str, log: &str, pid_file: &str, argv: &[String]) -> Cmd {
    let mut words = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        r#"set -e; mkdir -p "$1"; log=$2; pf=$3; shift 3; cd /; setsid "$@" >>"$log" 2>&1 </dev/null & pid=$!; st=$(sed 's/.*)//' "/proc/$pid/stat" | cut -d' ' -f21) || st=0; printf '%s %s\n' "$pid" "$st" >"$pf.$pid"; mv -f "$pf.$pid" "$pf"; echo "$pid""#.to_owned(),
        "kube-free-start".to_owned(),
        dir.to_owned(),
        log.to_owned(),
        pid_file.to_owned(),
    ];
    words.extend(argv.iter().cloned());
    Cmd::change(words)
}

pub fn stat_cmd(pid: u32) -> Cmd {
    // `|| true`-free: a missing file is a normal answer (exit 1, empty output).
    Cmd::read(["cat".to_owned(), format!("/proc/{pid}/stat")])
}

/// Signals the instance's whole process group (it leads its own session and group, by `setsid`), so
/// that children of a wrapper command stop too.
pub fn kill_cmd(pid: u32, signal: &str) -> Cmd {
    Cmd::change([
        "kill".to_owned(),
        "-s".to_owned(),
        signal.to_owned(),
        "--".to_owned(),
        format!("-{pid}"),
    ])
}

/// Prints a file; prints nothing (and succeeds) when there is no such file.
pub fn read_file_cmd(path: &str) -> Cmd {
    Cmd::read([
        "sh",
        "-c",
        r#"test ! -e "$1" || cat -- "$1""#,
        "kube-free-read",
        path,
    ])
}

/// Writes a file atomically: a temp file beside it, fsync, rename.
pub fn write_file_cmd(path: &str, content: &[u8]) -> Cmd {
    Cmd::change([
        "sh",
        "-c",
        r#"set -e; mkdir -p "$(dirname "$1")"; tmp=$(mktemp "$1.XXXXXX"); cat >"$tmp"; chmod 644 "$tmp"; sync "$tmp"; mv -f "$tmp" "$1""#,
        "kube-free-write",
        path,
    ])
    .with_stdin(content)
}

pub fn remove_cmd(path: &str) -> Cmd {
    Cmd::change(["rm", "-f", path])
}

/// Prints every instance file under `state_dir` (`<env>/<app>/<slot>.json`; `rollouts/` holds rollout
/// records, not instances) as a line with its path, then a line with its content.
pub fn list_instances_cmd(state_dir: &str) -> Cmd {
    Cmd::read([
        "sh",
        "-c",
        r#"for f in "$1"/*/*/*.json; do case "$f" in "$1"/rollouts/*) continue;; esac; if [ -f "$f" ]; then printf '%s\n' "$f"; tr -d '\n' <"$f"; printf '\n'; fi; done"#,
        "kube-free-list",
        state_dir,
    ])
}

pub fn tail_cmd(path: &str, lines: u32) -> Cmd {
    Cmd::read([
        "tail".to_owned(),
        "-n".to_owned(),
        lines.to_string(),
        path.to_owned(),
    ])
}

/// State and start time from `/proc/<pid>/stat` (the command name may hold spaces and parentheses,
/// so fields are counted after its last `)`).
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// A recorded instance as found on its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Record(InstanceRecord),
    /// A file that is not a valid record (torn or edited): reported, never trusted.
    Unreadable {
        path: String,
        error: String,
    },
}

pub fn parse_instances(text: &str) -> Vec<Found> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|pair| {
            let path = pair[0].to_owned();
            let body = pair.get(1).copied().unwrap_or("");
            match serde_json::from_str::<InstanceRecord>(body) {
                Ok(r) => Found::Record(r),
                Err(e) => Found::Unreadable {
                    path,
                    error: e.to_string(),
                },
            }
        })
        .collect()
}

/// Whether the process of `record` is alive and is the one that was started (not a reused pid).
pub async fn is_alive(t: &dyn Transport, record: &InstanceRecord) -> Result<bool, TransportError> {
    let out = t.run(&stat_cmd(record.pid), TIMEOUT).await?;
    match out.status {
        Some(0) => Ok(
            matches!(parse_stat(&out.stdout_text()), Some((state, start)) if state != 'Z' && state != 'X' && start == record.start_ticks),
        ),
        // `cat` of a missing /proc entry: no such process.
        Some(1) => Ok(false),
        status => Err(TransportError::Failed {
            host: t.host().to_owned(),
            cmd: stat_cmd(record.pid).to_string(),
            status,
            stderr: out.stderr_text(),
        }),
    }
}

/// What to start: argv (environment first, through `env`) and where to record it.
pub struct StartSpec<'a> {
    pub state_dir: &'a str,
    pub env: &'a str,
    pub app: &'a str,
    pub slot: &'a str,
    pub version: &'a str,
    pub revision: &'a str,
    pub port: u16,
    pub argv: Vec<String>,
}

/// Starts the instance and writes its record; fails (with the end of its log) if it exits at once.
pub async fn start(
    t: &dyn Transport,
    spec: &StartSpec<'_>,
) -> Result<InstanceRecord, TransportError> {
    let dir = crate::state::app_dir(spec.state_dir, spec.env, spec.app);
    let log = crate::state::log_file(spec.state_dir, spec.env, spec.app, spec.slot);
    let pid_file = crate::state::pid_file(spec.state_dir, spec.env, spec.app, spec.slot);
    let out = run_ok(t, &start_cmd(&dir, &log, &pid_file, &spec.argv), TIMEOUT).await?;
    let failed = |why: String| TransportError::Process {
        host: t.host().to_owned(),
        message: format!("`{}`: {why}", spec.argv.join(" ")),
    };
    let pid: u32 = out.stdout_text().trim().parse().map_err(|_| {
        failed(format!(
            "no pid from the start script: {:?}",
            out.stdout_text()
        ))
    })?;
    // A command that cannot run at all (not found, bad flags) exits at once: give it a moment.
    tokio::time::sleep(EXITS_AT_ONCE).await;
    let stat = t.run(&stat_cmd(pid), TIMEOUT).await?;
    let Some((_, start_ticks)) =
        parse_stat(&stat.stdout_text()).filter(|(s, _)| *s != 'Z' && *s != 'X')
    else {
        let tail = t
            .run(&tail_cmd(&log, 20), TIMEOUT)
            .await
            .map(|o| o.stdout_text())
            .unwrap_or_default();
        return Err(failed(format!(
            "the process exited at once; end of {log}:\n{tail}"
        )));
    };
    let record = InstanceRecord {
        env: spec.env.to_owned(),
        app: spec.app.to_owned(),
        slot: spec.slot.to_owned(),
        version: spec.version.to_owned(),
        revision: spec.revision.to_owned(),
        port: spec.port,
        pid,
        start_ticks,
        started_at: crate::state::now(),
        argv: spec.argv.clone(),
    };
    let file = crate::state::instance_file(spec.state_dir, spec.env, spec.app, spec.slot);
    let json = serde_json::to_vec(&record).expect("a record serializes");
    run_ok(t, &write_file_cmd(&file, &json), TIMEOUT).await?;
    Ok(record)
}

/// Stops the instance (SIGTERM, then SIGKILL after `stop_timeout`) and removes its record. Stopping
/// what is not running is not an error.
pub async fn stop(
    t: &dyn Transport,
    state_dir: &str,
    record: &InstanceRecord,
    stop_timeout: Duration,
) -> Result<(), TransportError> {
    if is_alive(t, record).await? {
        // The process may exit between the check and the signal: `kill` failing then is fine.
        t.run(&kill_cmd(record.pid, "TERM"), TIMEOUT).await?;
        let deadline = tokio::time::Instant::now() + stop_timeout;
        while is_alive(t, record).await? {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    host = t.host(),
                    pid = record.pid,
                    "instance did not stop within stop_timeout; sending SIGKILL"
                );
                t.run(&kill_cmd(record.pid, "KILL"), TIMEOUT).await?;
                let gone = tokio::time::Instant::now() + Duration::from_secs(5);
                while is_alive(t, record).await? {
                    if tokio::time::Instant::now() >= gone {
                        return Err(TransportError::Process {
                            host: t.host().to_owned(),
                            message: format!("pid {} survived SIGKILL", record.pid),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let file = crate::state::instance_file(state_dir, &record.env, &record.app, &record.slot);
    run_ok(t, &remove_cmd(&file), TIMEOUT).await?;
    let pid_file = crate::state::pid_file(state_dir, &record.env, &record.app, &record.slot);
    run_ok(t, &remove_cmd(&pid_file), TIMEOUT).await?;
    Ok(())
}

/// `PID START_TICKS` from a pid file.
pub fn parse_pid_file(text: &str) -> Option<(u32, u64)> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let ticks = words.next()?.parse().ok()?;
    Some((pid, ticks))
}

/// The process a slot's pid file names (pid and start time), shaped as a record of the slot; `None`
/// when there is no pid file. Whether it still runs is [`is_alive`]'s to say.
async fn pid_file_record(
    t: &dyn Transport,
    state_dir: &str,
    env: &str,
    app: &str,
    slot: &str,
) -> Result<Option<InstanceRecord>, TransportError> {
    let pid_file = crate::state::pid_file(state_dir, env, app, slot);
    let out = run_ok(t, &read_file_cmd(&pid_file), TIMEOUT).await?;
    Ok(
        parse_pid_file(&out.stdout_text()).map(|(pid, start_ticks)| InstanceRecord {
            env: env.to_owned(),
            app: app.to_owned(),
            slot: slot.to_owned(),
            version: String::new(),
            revision: String::new(),
            port: 0,
            pid,
            start_ticks,
            started_at: 0,
            argv: Vec::new(),
        }),
    )
}

/// A process found through a slot's pid file, with what `/proc` tells of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    pub start_ticks: u64,
    /// `/proc/<pid>/cmdline`.
    pub argv: Vec<String>,
    /// `/proc/<pid>/environ`, `NAME=value` words.
    pub environ: Vec<String>,
}

/// The process a slot's pid file names, when it still runs (same start time), with its command line
/// and environment: what can be known of a slot whose instance file cannot be read.
pub async fn recover(
    t: &dyn Transport,
    state_dir: &str,
    env: &str,
    app: &str,
    slot: &str,
) -> Result<Option<Running>, TransportError> {
    let Some(record) = pid_file_record(t, state_dir, env, app, slot).await? else {
        return Ok(None);
    };
    if !is_alive(t, &record).await? {
        return Ok(None);
    }
    let words = |out: Output| -> Vec<String> {
        out.stdout
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect()
    };
    let proc_file =
        |name: &str| Cmd::read(["cat".to_owned(), format!("/proc/{}/{name}", record.pid)]);
    let argv = words(t.run(&proc_file("cmdline"), TIMEOUT).await?);
    let environ = words(t.run(&proc_file("environ"), TIMEOUT).await?);
    Ok(Some(Running {
        pid: record.pid,
        start_ticks: record.start_ticks,
        argv,
        environ,
    }))
}

/// Stops the process a pid file names when it runs and the slot has no instance file (a run was
/// killed between the start and the instance file): it never got traffic, as it was never enabled.
/// Returns whether there was one.
pub async fn stop_orphan(
    t: &dyn Transport,
    state_dir: &str,
    env: &str,
    app: &str,
    slot: &str,
    stop_timeout: Duration,
) -> Result<bool, TransportError> {
    let Some(orphan) = pid_file_record(t, state_dir, env, app, slot).await? else {
        return Ok(false);
    };
    let alive = is_alive(t, &orphan).await?;
    if alive {
        tracing::warn!(
            host = t.host(),
            pid = orphan.pid,
            pid_file = crate::state::pid_file(state_dir, env, app, slot),
            "stopping a process without an instance file (its run was killed while starting it)"
        );
    }
    stop(t, state_dir, &orphan, stop_timeout).await?;
    Ok(alive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::local::LocalTransport;

    #[test]
    fn commands_are_exact() {
        let cmd = start_cmd(
            "/s/prod/api",
            "/s/prod/api/blue.log",
            "/s/prod/api/blue.pid",
            &["env".into(), "PORT=8000".into(), "/opt/api bin".into()],
        );
        assert_eq!(
            cmd.to_string(),
            r#"sh -c 'set -e; mkdir -p "$1"; log=$2; pf=$3; shift 3; cd /; setsid "$@" >>"$log" 2>&1 </dev/null & pid=$!; st=$(sed '\''s/.*)//'\'' "/proc/$pid/stat" | cut -d'\'' '\'' -f21) || st=0; printf '\''%s %s\n'\'' "$pid" "$st" >"$pf.$pid"; mv -f "$pf.$pid" "$pf"; echo "$pid"' kube-free-start /s/prod/api /s/prod/api/blue.log /s/prod/api/blue.pid env PORT=8000 '/opt/api bin'"#
        );
        assert_eq!(parse_pid_file("4242 31337\n"), Some((4242, 31337)));
        assert_eq!(parse_pid_file("4242"), None);
        assert!(cmd.changes);
        assert_eq!(kill_cmd(42, "TERM").to_string(), "kill -s TERM -- -42");
        assert_eq!(stat_cmd(42).to_string(), "cat /proc/42/stat");
        assert_eq!(
            read_file_cmd("/s/rollouts/prod/api.json").to_string(),
            r#"sh -c 'test ! -e "$1" || cat -- "$1"' kube-free-read /s/rollouts/prod/api.json"#
        );
        assert!(!read_file_cmd("/x").changes);
        assert!(!stat_cmd(42).changes);
        assert_eq!(
            write_file_cmd("/s/x.json", b"{}").to_string(),
            r#"sh -c 'set -e; mkdir -p "$(dirname "$1")"; tmp=$(mktemp "$1.XXXXXX"); cat >"$tmp"; chmod 644 "$tmp"; sync "$tmp"; mv -f "$tmp" "$1"' kube-free-write /s/x.json"#
        );
    }

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345 67 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn torn_instance_files_are_reported_not_trusted() {
        let found = parse_instances("/s/a/b/blue.json\n{\"env\":\"a\"\n");
        assert!(matches!(&found[0], Found::Unreadable { path, .. } if path == "/s/a/b/blue.json"));
    }

    /// A run killed right after the start script ran: a process, its pid file, no instance file.
    #[tokio::test]
    async fn an_orphan_of_a_killed_start_is_found_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().to_str().unwrap();
        let t = LocalTransport::new("here");
        let app_dir = crate::state::app_dir(state_dir, "test", "sleeper");
        let log = crate::state::log_file(state_dir, "test", "sleeper", "green");
        let pid_file = crate::state::pid_file(state_dir, "test", "sleeper", "green");
        let out = run_ok(
            &t,
            &start_cmd(&app_dir, &log, &pid_file, &["sleep".into(), "30".into()]),
            TIMEOUT,
        )
        .await
        .unwrap();
        let pid: u32 = out.stdout_text().trim().parse().unwrap();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        let stopped = stop_orphan(
            &t,
            state_dir,
            "test",
            "sleeper",
            "green",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(stopped);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || parse_stat(&stat).is_some_and(|(s, _)| s == 'Z'),
            "pid {pid} is gone: {stat}"
        );
        assert!(!std::path::Path::new(&pid_file).exists());
        // Nothing to do the second time, and none without a pid file.
        assert!(!stop_orphan(
            &t,
            state_dir,
            "test",
            "sleeper",
            "green",
            Duration::from_secs(5)
        )
        .await
        .unwrap());
    }

    #[tokio::test]
    async fn start_check_and_stop_a_real_process() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().to_str().unwrap();
        let t = LocalTransport::new("here");
        let spec = StartSpec {
            state_dir,
            env: "test",
            app: "sleeper",
            slot: "blue",
            version: "1",
            revision: "abc",
            port: 1,
            argv: vec!["sleep".into(), "30".into()],
        };
        let record = start(&t, &spec).await.unwrap();
        assert!(is_alive(&t, &record).await.unwrap());
        // The start script recorded the pid and the start time itself.
        let pid_file = crate::state::pid_file(state_dir, "test", "sleeper", "blue");
        assert_eq!(
            parse_pid_file(&std::fs::read_to_string(&pid_file).unwrap()),
            Some((record.pid, record.start_ticks))
        );
        let listed = t
            .run(&list_instances_cmd(state_dir), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            parse_instances(&listed.stdout_text()),
            vec![Found::Record(record.clone())]
        );
        // A record whose start time does not match is not our process, even with a live pid.
        let impostor = InstanceRecord {
            start_ticks: record.start_ticks + 1,
            ..record.clone()
        };
        assert!(!is_alive(&t, &impostor).await.unwrap());
        stop(&t, state_dir, &record, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!is_alive(&t, &record).await.unwrap());
        let listed = t
            .run(&list_instances_cmd(state_dir), TIMEOUT)
            .await
            .unwrap();
        assert!(parse_instances(&listed.stdout_text()).is_empty());
        assert!(!std::path::Path::new(&pid_file).exists());
        // A command that exits at once is a failed start, with its log.
        let bad = StartSpec {
            argv: vec!["sh".into(), "-c".into(), "echo boom >&2; exit 3".into()],
            ..spec
        };
        let err = start(&t, &bad).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }
}
