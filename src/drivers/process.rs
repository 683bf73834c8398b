//! The process runtime ([`ProcessRuntime`], a [`Runtime`]): starts an app instance detached from
//! the session that started it (its own session, output to a log file), tells whether a recorded pid
//! is still that very process, and stops it (SIGTERM, then SIGKILL after `stop_timeout`). Its
//! records are instance files under the host's `state_dir` (`<env>/<app>/<slot>.json`, beside a
//! `.pid` and a `.log`). Commands are built by pure functions; the async functions run them through
//! a [`Transport`].

use super::files::{read_file_cmd, tail_cmd, write_record_cmd};
use super::runtime::{Found, Running, StartSpec, Started};
use super::{run_ok, Cmd, Output, Runtime, RuntimeError, Transport};
use crate::names::SlotRef;
use crate::state::InstanceRecord;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);
/// How soon after its start a process that exits counts as a failed start.
const EXITS_AT_ONCE: Duration = Duration::from_millis(150);

/// What [`start_cmd`] runs: `$1` the app's directory, `$2` its log, `$3` its pid file, then argv.
const LAUNCH_SCRIPT: &str = r#"set -e; mkdir -p "$1"; chmod 700 "$1" "${1%/*}"; log=$2; pf=$3; shift 3; cd /; ss=$(command -v setsid); (umask 077; : >>"$log"); exec 3<&0; ( exec env -i PATH="$PATH" HOME="${HOME:-/}" "$ss" sh -c 'while IFS= read -r KUBE_FREE_KV <&3; do export "$KUBE_FREE_KV"; done; unset KUBE_FREE_KV; exec 3<&-; exec "$@"' kube-free-app "$@" ) >>"$log" 2>&1 </dev/null & pid=$!; exec 3<&-; umask 077; st=$(sed 's/.*)//' "/proc/$pid/stat" | cut -d' ' -f21) || st=0; printf '%s %s\n' "$pid" "$st" >"$pf.$pid"; mv -f "$pf.$pid" "$pf"; echo "$pid""#;

/// What [`session_cmd`] and [`alive_cmd`] run: `$1` the session id, `$2` the leader's start ticks,
/// `$3` a signal or nothing, `$4` `quick` or nothing.
const SESSION_SCRIPT: &str = r#"sid=$1; ticks=$2; sig=$3; quick=$4; if read -r l 2>/dev/null <"/proc/$sid/stat"; then set -- ${l##*) }; [ "${20}" = "$ticks" ] || exit 0; if [ -n "$quick" ]; then case $1 in Z|X) ;; *) echo "$sid"; exit 0 ;; esac; fi; fi; pids=; for f in /proc/[0-9]*/stat; do read -r l 2>/dev/null <"$f" || continue; set -- ${l##*) }; [ "$4" = "$sid" ] || continue; case $1 in Z|X) continue ;; esac; [ "${20}" -ge "$ticks" ] || continue; p=${f#/proc/}; pids="$pids ${p%/stat}"; done; if [ -n "$sig" ] && [ -n "$pids" ]; then kill -s "$sig" $pids 2>/dev/null || true; fi; for p in $pids; do echo "$p"; done"#;

/// What [`strangers_cmd`] runs: `$1` the session id, `$2` the leader's start ticks, `$3` the port,
/// `$4` [`SESSION_SCRIPT`].
const STRANGERS_SCRIPT: &str = r#"port=$(printf ':%04X' "$3"); listening=$(awk -v p="$port" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null | sort -u); [ -n "$listening" ] || exit 0; ours=$(for p in $(sh -c "$4" kube-free-session "$1" "$2" ""); do ls -l "/proc/$p/fd" 2>/dev/null; done | sed -n 's/.*socket:\[\([0-9]*\)\].*/\1/p' | sort -u); others=; for i in $listening; do case " $(echo $ours) " in *" $i "*) ;; *) others="$others $i" ;; esac; done; [ -n "$others" ] || exit 0; for i in $others; do find /proc/[0-9]*/fd -lname "socket:\[$i\]" 2>/dev/null | sed 's|^/proc/\([0-9]*\)/.*|pid \1|'; echo "inode $i"; done | sort -u"#;

/// Shell functions of [`START_SCRIPT`] and [`STOP_SCRIPT`], which set `sess` ([`SESSION_SCRIPT`])
/// and `grace` (tenths of a second) first: `session SID TICKS SIGNAL QUICK` runs the session
/// script; `alive SID TICKS` says whether the instance runs; `end SID TICKS` stops it — SIGTERM to
/// every member, SIGKILL after `grace`, then up to 5 s for it to go — and prints `killed SID` when
/// it sent SIGKILL, or `unkillable SID` (and ends the script) when the instance survived it.
macro_rules! end_fns {
    () => {
        r#"session() { sh -c "$sess" kube-free-session "$@"; }; alive() { [ -n "$(session "$1" "$2" "" quick)" ]; }; end() { [ -n "$(session "$1" "$2" TERM "")" ] || return 0; n=0; while alive "$1" "$2"; do if [ "$n" -ge "$grace" ]; then echo "killed $1"; session "$1" "$2" KILL "" >/dev/null; n=0; while alive "$1" "$2"; do [ "$n" -lt 50 ] || { echo "unkillable $1"; exit 0; }; sleep 0.1; n=$((n+1)); done; return 0; fi; sleep 0.1; n=$((n+1)); done; }; "#
    };
}

/// What [`start_script_cmd`] runs. `$1` the instance file, `$2` the pid file, `$3` the app's
/// directory, `$4` its log, `$5` the port, `$6` the grace of an orphan in tenths of a second, `$7`
/// how long to wait for a process that exits at once, `$8` [`SESSION_SCRIPT`], `$9`
/// [`STRANGERS_SCRIPT`], `${10}` [`LAUNCH_SCRIPT`], then argv; on its standard input the record's
/// JSON before `"pid":…` and after `"start_ticks":…` (a line each), then the environment's lines.
/// Its steps, each of which may end it:
/// 1. the instance file names a live instance: prints `running` and the record, starts nothing;
/// 2. the pid file names a live process (a killed run's start, never enabled): stops it, printing
///    `orphan PID`, and removes the files of the slot;
/// 3. something listens on the port: prints `taken` and the `pid PID` lines of [`strangers_cmd`];
/// 4. starts the app ([`LAUNCH_SCRIPT`]); when it is gone after the wait, prints `exited` and the
///    end of its log;
/// 5. writes the instance file (0600, fsync, rename) and prints `started PID START_TICKS`.
const START_SCRIPT: &str = concat!(
    r#"f=$1; pf=$2; dir=$3; log=$4; port=$5; grace=$6; settle=$7; sess=$8; strangers=$9; launch=${10}; shift 10; IFS= read -r pre; IFS= read -r post; num() { case $1 in ''|*[!0-9]*) return 1 ;; esac; }; "#,
    end_fns!(),
    r#"if [ -f "$f" ]; then rec=$(tr -d '\n' <"$f"); p=$(printf '%s' "$rec" | sed -n 's/.*[{,]"pid":\([0-9]*\).*/\1/p'); t=$(printf '%s' "$rec" | sed -n 's/.*[{,]"start_ticks":\([0-9]*\).*/\1/p'); if num "$p" && num "$t" && alive "$p" "$t"; then echo running; printf '%s\n' "$rec"; exit 0; fi; fi; if [ -f "$pf" ]; then p=; t=; read -r p t _ <"$pf" || :; if num "$p" && num "$t" && alive "$p" "$t"; then echo "orphan $p"; end "$p" "$t"; fi; rm -f "$f" "$pf"; fi; out=$(sh -c "$strangers" kube-free-listeners 4294967295 0 "$port" "$sess"); if [ -n "$out" ]; then echo taken; printf '%s\n' "$out"; exit 0; fi; pid=$(sh -c "$launch" kube-free-start "$dir" "$log" "$pf" "$@") || exit 1; sleep "$settle"; st=; if read -r l 2>/dev/null <"/proc/$pid/stat"; then set -- ${l##*) }; case $1 in Z|X) ;; *) st=${20} ;; esac; fi; if [ -z "$st" ]; then echo exited; tail -n 20 "$log" 2>/dev/null; exit 0; fi; tmp=$f.$pid; (umask 077; printf '%s"pid":%s,"start_ticks":%s%s' "$pre" "$pid" "$st" "$post" >"$tmp") && sync "$tmp" && mv -f "$tmp" "$f" || exit 1; echo "started $pid $st""#
);

/// What [`stop_script_cmd`] runs: `$1` [`SESSION_SCRIPT`], `$2` the grace in tenths of a second,
/// `$3` the instance file, `$4` the pid file, `$5` the session id, `$6` the leader's start ticks.
/// Stops the instance as `end` of [`end_fns`] does, then removes its files (not when it
/// survived SIGKILL).
const STOP_SCRIPT: &str = concat!(
    r#"sess=$1; grace=$2; f=$3; pf=$4; "#,
    end_fns!(),
    r#"end "$5" "$6"; rm -f "$f" "$pf""#
);

/// The JSON of a record with `pid` and `start_ticks` 0 cut around them, for [`START_SCRIPT`] to
/// write with the values it learns.
fn record_around(record: &InstanceRecord) -> (String, String) {
    let json = serde_json::to_string(&InstanceRecord {
        pid: 0,
        start_ticks: 0,
        ..record.clone()
    })
    .expect("a record serializes");
    let (before, after) = json
        .split_once(r#""pid":0,"start_ticks":0"#)
        .expect("a record serializes its pid just before its start ticks");
    (before.to_owned(), after.to_owned())
}

/// The whole start of an instance in one command ([`START_SCRIPT`]): `record` is what to write,
/// but for its pid and start ticks.
pub fn start_script_cmd(
    files: &SlotFiles,
    record: &InstanceRecord,
    grace: Duration,
    env: &str,
) -> Cmd {
    let (before, after) = record_around(record);
    let mut words = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        START_SCRIPT.to_owned(),
        "kube-free-start".to_owned(),
        files.record.clone(),
        files.pid.clone(),
        files.dir.clone(),
        files.log.clone(),
        record.port.to_string(),
        tenths(grace),
        format!("{:.3}", EXITS_AT_ONCE.as_secs_f64()),
        SESSION_SCRIPT.to_owned(),
        STRANGERS_SCRIPT.to_owned(),
        LAUNCH_SCRIPT.to_owned(),
    ];
    words.extend(record.argv.iter().cloned());
    Cmd::change(words).with_stdin(format!("{before}\n{after}\n{env}").into_bytes())
}

/// The whole stop of the instance of `record` in one command ([`STOP_SCRIPT`]).
pub fn stop_script_cmd(files: &SlotFiles, record: &InstanceRecord, grace: Duration) -> Cmd {
    Cmd::change([
        "sh".to_owned(),
        "-c".to_owned(),
        STOP_SCRIPT.to_owned(),
        "kube-free-stop".to_owned(),
        SESSION_SCRIPT.to_owned(),
        tenths(grace),
        files.record.clone(),
        files.pid.clone(),
        record.pid.to_string(),
        record.start_ticks.to_string(),
    ])
}

/// `grace` in tenths of a second, rounded up.
fn tenths(grace: Duration) -> String {
    grace.as_millis().div_ceil(100).to_string()
}

/// The time a script that stops an instance may take: its grace, 5 s after SIGKILL, and the
/// usual bound for the rest.
fn with_grace(grace: Duration) -> Duration {
    TIMEOUT + grace + Duration::from_secs(5)
}

/// What [`START_SCRIPT`] or [`STOP_SCRIPT`] said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Said {
    /// `running`: the instance file's text.
    Running(String),
    /// `taken`: the pids that listen on the port.
    Taken(Vec<u32>),
    /// `exited`: the end of the log.
    Exited(String),
    Started {
        pid: u32,
        start_ticks: u64,
    },
    /// `unkillable PID`.
    Unkillable(u32),
    /// A stop's end (nothing more to say).
    Stopped,
}

/// [`Said`], and the pids of the `orphan` and `killed` lines before it, in order (each a
/// process that was stopped, or sent SIGKILL). `None` for output no script prints.
pub fn parse_said(text: &str) -> Option<(Said, Vec<(String, u32)>)> {
    let mut events = Vec::new();
    let mut lines = text.split_inclusive('\n');
    while let Some(line) = lines.next() {
        let rest = || lines.clone().collect::<String>();
        let mut words = line.split_whitespace();
        let said = match (words.next(), words.next(), words.next()) {
            (Some(what @ ("orphan" | "killed")), Some(pid), None) => {
                events.push((what.to_owned(), pid.parse().ok()?));
                continue;
            }
            (Some("unkillable"), Some(pid), None) => Said::Unkillable(pid.parse().ok()?),
            (Some("running"), None, _) => Said::Running(rest().trim_end().to_owned()),
            (Some("taken"), None, _) => Said::Taken(
                rest()
                    .lines()
                    .filter_map(|l| l.strip_prefix("pid ")?.parse().ok())
                    .collect(),
            ),
            (Some("exited"), None, _) => Said::Exited(rest()),
            (Some("started"), Some(pid), Some(ticks)) => Said::Started {
                pid: pid.parse().ok()?,
                start_ticks: ticks.parse().ok()?,
            },
            _ => return None,
        };
        return Some((said, events));
    }
    Some((Said::Stopped, events))
}

/// Starts argv in its own session with output appended to `log` (created 0600, in the app's
/// directory, 0700 like the environment's), in `/`, writes `PID START_TICKS` to `pid_file`
/// (atomically, before anything else can happen to the caller) and prints the pid. The app starts
/// with a clean environment: the host session's `PATH` (the one its command is looked up on) and
/// `HOME`, `PWD=/`, and the variables that come as `NAME=value` lines on the command's standard
/// input, `export`ed by the shell that then becomes the app (so no value is ever on a command line,
/// none changes how the script's own tools run, and nothing else of kube-free's or the SSH
/// session's environment reaches the app). Every value is a positional parameter; the script text
/// is constant.
pub fn start_cmd(dir: &str, log: &str, pid_file: &str, env: &str, argv: &[String]) -> Cmd {
    let mut words = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        LAUNCH_SCRIPT.to_owned(),
        "kube-free-start".to_owned(),
        dir.to_owned(),
        log.to_owned(),
        pid_file.to_owned(),
    ];
    words.extend(argv.iter().cloned());
    Cmd::change(words).with_stdin(env.as_bytes())
}

/// The processes of an instance: the live members of the session its leader `pid` started (by
/// `setsid`, so `pid` is the session id), started no earlier than the leader (`start_ticks`),
/// whether the leader still runs or not. A wrapper that did not `exec`, or children left by a
/// leader that exited, are members; a process that calls `setsid` itself leaves the session. None
/// when another process now has the leader's pid (it was reused). With `signal`, every member is
/// sent it. Prints one pid per line.
pub fn session_cmd(pid: u32, start_ticks: u64, signal: Option<&str>) -> Cmd {
    session_script_cmd(pid, start_ticks, signal, false)
}

/// Whether the instance runs, as [`session_cmd`] tells, but at the cost of one read when its leader
/// runs (the common case, asked every 100 ms in a bake): prints the leader's pid then, else what
/// [`session_cmd`] prints.
pub fn alive_cmd(pid: u32, start_ticks: u64) -> Cmd {
    session_script_cmd(pid, start_ticks, None, true)
}

fn session_script_cmd(pid: u32, start_ticks: u64, signal: Option<&str>, quick: bool) -> Cmd {
    let words = [
        "sh".to_owned(),
        "-c".to_owned(),
        SESSION_SCRIPT.to_owned(),
        "kube-free-session".to_owned(),
        pid.to_string(),
        start_ticks.to_string(),
        signal.unwrap_or_default().to_owned(),
        if quick { "quick" } else { "" }.to_owned(),
    ];
    match signal {
        Some(_) => Cmd::change(words),
        None => Cmd::read(words),
    }
}

/// The TCP sockets listening on `port` (IPv4 and IPv6) that no member of the instance's session
/// ([`session_cmd`]) holds: prints `inode` lines for them, after `pid PID` lines for every process
/// that holds one and can be seen (all of them as root; a user sees its own). Nothing when the
/// instance alone listens there, or nobody does.
/// Without an instance (`None`), every socket listening on `port` is a stranger's.
pub fn strangers_cmd(instance: Option<(u32, u64)>, port: u16) -> Cmd {
    // No process has the largest pid as its session id.
    let (pid, start_ticks) = instance.unwrap_or((u32::MAX, 0));
    Cmd::read([
        "sh".to_owned(),
        "-c".to_owned(),
        STRANGERS_SCRIPT.to_owned(),
        "kube-free-listeners".to_owned(),
        pid.to_string(),
        start_ticks.to_string(),
        port.to_string(),
        SESSION_SCRIPT.to_owned(),
    ])
}

/// The pids [`session_cmd`] printed.
pub fn parse_pids(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The line of [`list_instances_cmd`] after which the process table comes.
const PROCESS_TABLE: &str = "kube-free-processes";

/// Prints every instance file under `state_dir` (`<env>/<app>/<slot>.json`; `rollouts/` holds rollout
/// records, not instances) as a line with its path, then a line with its content; then, when there
/// was one, the line `kube-free-processes` and the host's process table (`/proc/<pid>/stat` of each
/// process, a line each), from which [`alive_in`] tells which instances run: observing a host is
/// one round trip.
pub fn list_instances_cmd(state_dir: &str) -> Cmd {
    Cmd::read([
        "sh",
        "-c",
        r#"any=; for f in "$1"/*/*/*.json; do case "$f" in "$1"/rollouts/*) continue;; esac; if [ -f "$f" ]; then printf '%s\n' "$f"; tr -d '\n' <"$f"; printf '\n'; any=1; fi; done; [ -n "$any" ] || exit 0; echo "$2"; cat /proc/[0-9]*/stat 2>/dev/null; :"#,
        "kube-free-list",
        state_dir,
        PROCESS_TABLE,
    ])
}

/// One process of a host's table, from its `/proc/<pid>/stat` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub state: char,
    pub session: u32,
    pub start_ticks: u64,
}

impl ProcStat {
    /// From a `/proc/<pid>/stat` line (fields counted after the command name's last `)`). A line
    /// cut short (a command name with a line break in it) keeps its pid, with the state `?`: that
    /// process is not known to run, nor to be the one an instance started.
    pub fn parse(line: &str) -> Option<ProcStat> {
        let (pid, rest) = line.split_once(" (")?;
        let pid = pid.trim().parse().ok()?;
        let fields = || -> Option<(char, u32, u64)> {
            let fields: Vec<&str> = rest.rsplit_once(')')?.1.split_whitespace().collect();
            let state = fields.first()?.chars().next()?;
            Some((
                state,
                fields.get(3)?.parse().ok()?,
                fields.get(19)?.parse().ok()?,
            ))
        };
        let (state, session, start_ticks) = fields().unwrap_or(('?', 0, 0));
        Some(ProcStat {
            pid,
            state,
            session,
            start_ticks,
        })
    }

    fn gone(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Whether the instance whose leader was `pid`, started at `start_ticks`, runs, as `table` shows
/// it: what [`session_cmd`] would print something for — its leader runs (the very process: same
/// start time), or, with the leader gone or a zombie, a member of its session started since. A
/// line of the table that could not be read leaves a process out (or unknown, [`ProcStat::parse`]),
/// so only a yes is sure: a no is asked again of the host ([`alive_cmd`]).
pub fn alive_in(table: &[ProcStat], pid: u32, start_ticks: u64) -> bool {
    if let Some(leader) = table.iter().find(|p| p.pid == pid) {
        if leader.start_ticks != start_ticks {
            return false;
        }
        if !leader.gone() {
            return true;
        }
    }
    table
        .iter()
        .any(|p| p.session == pid && !p.gone() && p.start_ticks >= start_ticks)
}

/// State and start time from a whole `/proc/<pid>/stat` ([`ProcStat::parse`]: the command name
/// may hold spaces, parentheses and line breaks).
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    ProcStat::parse(text)
        .filter(|p| p.state != '?')
        .map(|p| (p.state, p.start_ticks))
}

/// A record, or why the text of one is not a record.
pub fn parse_record(body: &str) -> Result<InstanceRecord, String> {
    serde_json::from_str::<InstanceRecord>(body).map_err(|e| e.to_string())
}

/// An instance file listed: its path, and its record or why it is not one.
pub type Listed = (String, Result<InstanceRecord, String>);

/// The listing of [`list_instances_cmd`]: each instance file, and the process table.
pub fn parse_instances(text: &str) -> (Vec<Listed>, Vec<ProcStat>) {
    let lines: Vec<&str> = text.lines().collect();
    // A path and a content line each: the marker can only be where a path would be (a file
    // whose content is the marker is a torn record, not the end of the files).
    let end = (0..lines.len())
        .step_by(2)
        .find(|&i| lines[i] == PROCESS_TABLE)
        .unwrap_or(lines.len());
    let files = lines[..end]
        .chunks(2)
        .map(|pair| {
            let body = pair.get(1).copied().unwrap_or("");
            (pair[0].to_owned(), parse_record(body))
        })
        .collect();
    let table = lines[end..]
        .iter()
        .filter_map(|l| ProcStat::parse(l))
        .collect();
    (files, table)
}

/// The slot (env, app, slot) of an instance file at `path` under `state_dir`, when it is one.
pub fn slot_of_file(state_dir: &str, path: &str) -> Option<(String, String, String)> {
    let rest = path
        .strip_prefix(state_dir.trim_end_matches('/'))?
        .trim_start_matches('/')
        .strip_suffix(".json")?;
    match rest.split('/').collect::<Vec<_>>()[..] {
        [env, app, slot] => Some((env.to_owned(), app.to_owned(), slot.to_owned())),
        _ => None,
    }
}

/// `PID START_TICKS` from a pid file.
pub fn parse_pid_file(text: &str) -> Option<(u32, u64)> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let ticks = words.next()?.parse().ok()?;
    Some((pid, ticks))
}

/// Where a slot's files are on its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotFiles {
    /// The app's directory, which holds the others.
    pub dir: String,
    /// The instance file.
    pub record: String,
    pub pid: String,
    pub log: String,
}

/// The process runtime of one host: its transport and its `state_dir`.
pub struct ProcessRuntime {
    transport: Arc<dyn Transport>,
    state_dir: String,
}

impl ProcessRuntime {
    pub fn new(transport: Arc<dyn Transport>, state_dir: &str) -> ProcessRuntime {
        ProcessRuntime {
            transport,
            state_dir: state_dir.to_owned(),
        }
    }

    fn t(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    fn file(&self, at: &SlotRef) -> String {
        crate::state::instance_file(&self.state_dir, &at.env, &at.app, &at.slot)
    }

    fn pid_file(&self, at: &SlotRef) -> String {
        crate::state::pid_file(&self.state_dir, &at.env, &at.app, &at.slot)
    }

    fn log_file(&self, at: &SlotRef) -> String {
        crate::state::log_file(&self.state_dir, &at.env, &at.app, &at.slot)
    }

    fn files(&self, at: &SlotRef) -> SlotFiles {
        SlotFiles {
            dir: crate::state::app_dir(&self.state_dir, &at.env, &at.app),
            record: self.file(at),
            pid: self.pid_file(at),
            log: self.log_file(at),
        }
    }

    fn slot(&self, env: &str, app: &str, slot: &str) -> SlotRef {
        SlotRef::new(env, app, self.t().host(), slot)
    }

    /// [`strangers_cmd`]: `None` when no one but the instance listens on `port`, else the pids seen.
    async fn listeners(
        &self,
        instance: Option<(u32, u64)>,
        port: u16,
    ) -> Result<Option<Vec<u32>>, RuntimeError> {
        let out = run_ok(self.t(), &strangers_cmd(instance, port), TIMEOUT).await?;
        let out = out.stdout_text();
        if out.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(
            out.lines()
                .filter_map(|l| l.strip_prefix("pid ")?.parse().ok())
                .collect(),
        ))
    }

    /// The pids of the instance of `record` ([`session_cmd`]), each sent `signal` when given.
    #[cfg(test)]
    async fn members(
        &self,
        record: &InstanceRecord,
        signal: Option<&str>,
    ) -> Result<Vec<u32>, RuntimeError> {
        let out = run_ok(
            self.t(),
            &session_cmd(record.pid, record.start_ticks, signal),
            TIMEOUT,
        )
        .await?;
        Ok(parse_pids(&out.stdout_text()))
    }

    /// The process a slot's pid file names (pid and start time), shaped as a record of the slot;
    /// `None` when there is no pid file. Whether it still runs is `is_alive`'s to say.
    async fn pid_file_record(&self, at: &SlotRef) -> Result<Option<InstanceRecord>, RuntimeError> {
        let out = run_ok(self.t(), &read_file_cmd(&self.pid_file(at)), TIMEOUT).await?;
        Ok(
            parse_pid_file(&out.stdout_text()).map(|(pid, start_ticks)| InstanceRecord {
                env: at.env.clone(),
                app: at.app.clone(),
                slot: at.slot.clone(),
                version: String::new(),
                revision: String::new(),
                port: 0,
                pid,
                start_ticks,
                started_at: 0,
                argv: Vec::new(),
                container: None,
                spec: None,
            }),
        )
    }

    /// Logs what a start or a stop script did on its way: an orphan stopped, SIGKILL sent.
    fn tell(&self, events: &[(String, u32)], pid_file: &str) {
        for (what, pid) in events {
            if what == "orphan" {
                tracing::warn!(
                    host = self.t().host(),
                    pid,
                    pid_file,
                    "stopping a process without an instance file (its run was killed while starting it)"
                );
            } else {
                tracing::warn!(
                    host = self.t().host(),
                    pid,
                    "instance did not stop within stop_timeout; sending SIGKILL"
                );
            }
        }
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn host(&self) -> &str {
        self.t().host()
    }

    async fn instances(&self) -> Result<Vec<Found>, RuntimeError> {
        let listed = run_ok(self.t(), &list_instances_cmd(&self.state_dir), TIMEOUT).await?;
        let (files, table) = parse_instances(&listed.stdout_text());
        let mut found = Vec::new();
        for (path, parsed) in files {
            found.push(match parsed {
                Ok(record) => Found::Record {
                    alive: alive_in(&table, record.pid, record.start_ticks)
                        || self.is_alive(&record).await?,
                    record,
                },
                Err(error) => Found::Unreadable {
                    slot: slot_of_file(&self.state_dir, &path),
                    path,
                    error,
                },
            });
        }
        Ok(found)
    }

    async fn instance(&self, at: &SlotRef) -> Result<Option<InstanceRecord>, RuntimeError> {
        let out = self
            .t()
            .run(&Cmd::read(["cat", &self.file(at)]), TIMEOUT)
            .await?;
        Ok(out
            .success()
            .then(|| parse_record(&out.stdout_text()).ok())
            .flatten())
    }

    /// Whether a process of the instance of `record` still runs: its leader (the one that was
    /// started, not a reused pid) or anything else of its session ([`session_cmd`]).
    async fn is_alive(&self, record: &InstanceRecord) -> Result<bool, RuntimeError> {
        let cmd = alive_cmd(record.pid, record.start_ticks);
        let out = run_ok(self.t(), &cmd, TIMEOUT).await?;
        Ok(!parse_pids(&out.stdout_text()).is_empty())
    }

    /// The process a slot's pid file names, when it still runs (same start time), with its command
    /// line and environment: what can be known of a slot whose instance file cannot be read.
    async fn recover(&self, at: &SlotRef) -> Result<Option<Running>, RuntimeError> {
        let Some(record) = self.pid_file_record(at).await? else {
            return Ok(None);
        };
        if !self.is_alive(&record).await? {
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
        let argv = words(self.t().run(&proc_file("cmdline"), TIMEOUT).await?);
        let environ = words(self.t().run(&proc_file("environ"), TIMEOUT).await?);
        Ok(Some(Running {
            pid: record.pid,
            start_ticks: record.start_ticks,
            argv,
            environ,
        }))
    }

    async fn write_record(&self, record: &InstanceRecord) -> Result<(), RuntimeError> {
        let at = self.slot(&record.env, &record.app, &record.slot);
        let json = serde_json::to_vec(record).expect("a record serializes");
        run_ok(self.t(), &write_record_cmd(&self.file(&at), &json), TIMEOUT).await?;
        Ok(())
    }

    /// [`Runtime::start_unless_running`], which it is but for a live instance in the slot: an
    /// error then.
    async fn start(&self, spec: &StartSpec) -> Result<InstanceRecord, RuntimeError> {
        match self.start_unless_running(spec).await? {
            Started::New(record) => Ok(record),
            Started::Running(record) => Err(RuntimeError::Occupied {
                host: self.t().host().to_owned(),
                slot: record.slot,
                pid: record.pid,
            }),
        }
    }

    /// All of it in one command ([`start_script_cmd`]): the check for a live instance, the stop of
    /// a killed run's orphan, the check of the port, the start, the wait for a process that exits
    /// at once, the instance file.
    async fn start_unless_running(&self, spec: &StartSpec) -> Result<Started, RuntimeError> {
        let at = &spec.at;
        let host = || self.t().host().to_owned();
        let files = self.files(at);
        let env = spec.launch.env_lines(&at.app)?;
        let argv = spec.launch.command.clone();
        let mut record = InstanceRecord {
            env: at.env.clone(),
            app: at.app.clone(),
            slot: at.slot.clone(),
            version: spec.version.clone(),
            revision: spec.revision.clone(),
            port: spec.port,
            pid: 0,
            start_ticks: 0,
            started_at: crate::state::now(),
            argv,
            container: None,
            spec: Some(spec.spec.clone()),
        };
        let cmd = start_script_cmd(&files, &record, spec.stop_timeout, &env);
        let out = run_ok(self.t(), &cmd, with_grace(spec.stop_timeout)).await?;
        let text = out.stdout_text();
        let no_pid = || RuntimeError::NoPid {
            host: host(),
            command: record.argv.join(" "),
            output: text.clone(),
        };
        let (said, events) = parse_said(&text).ok_or_else(no_pid)?;
        self.tell(&events, &files.pid);
        match said {
            Said::Started { pid, start_ticks } => {
                record.pid = pid;
                record.start_ticks = start_ticks;
                Ok(Started::New(record))
            }
            Said::Running(text) => match parse_record(&text) {
                Ok(record) => Ok(Started::Running(record)),
                Err(error) => Err(RuntimeError::Unreadable {
                    host: host(),
                    path: files.record,
                    error,
                }),
            },
            Said::Taken(pids) => Err(RuntimeError::PortTaken {
                host: host(),
                slot: at.slot.clone(),
                port: spec.port,
                pids: match &pids[..] {
                    [] => "unknown".to_owned(),
                    pids => pids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            }),
            Said::Exited(tail) => Err(RuntimeError::ExitedAtOnce {
                host: host(),
                command: record.argv.join(" "),
                log: files.log,
                tail,
            }),
            Said::Unkillable(pid) => Err(RuntimeError::Unkillable { host: host(), pid }),
            Said::Stopped => Err(no_pid()),
        }
    }

    /// SIGTERM, then SIGKILL after `stop_timeout`; removes the instance file and the pid file. One
    /// command ([`stop_script_cmd`]).
    async fn stop(
        &self,
        record: &InstanceRecord,
        stop_timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let t = self.t();
        if record.container.is_some() {
            return Err(RuntimeError::NotMine {
                host: t.host().to_owned(),
                runtime: "process",
                slot: record.slot.clone(),
            });
        }
        let files = self.files(&self.slot(&record.env, &record.app, &record.slot));
        let cmd = stop_script_cmd(&files, record, stop_timeout);
        let out = run_ok(t, &cmd, with_grace(stop_timeout)).await?;
        // It prints nothing else.
        let (said, events) = parse_said(&out.stdout_text()).unwrap_or((Said::Stopped, vec![]));
        self.tell(&events, &files.pid);
        match said {
            Said::Unkillable(pid) => Err(RuntimeError::Unkillable {
                host: t.host().to_owned(),
                pid,
            }),
            _ => Ok(()),
        }
    }

    async fn strangers_on_port(
        &self,
        record: &InstanceRecord,
    ) -> Result<Option<Vec<u32>>, RuntimeError> {
        self.listeners(Some((record.pid, record.start_ticks)), record.port)
            .await
    }

    async fn logs(&self, at: &SlotRef, lines: u32) -> Result<(String, String), RuntimeError> {
        let (log, cmd) = self.logs_cmd(at, lines, false);
        let out = run_ok(self.t(), &cmd, TIMEOUT).await?;
        Ok((log, out.stdout_text()))
    }

    /// `tail` of the slot's log file (`-F` to follow it), which the start appends the instance's
    /// stdout and stderr to and a stop leaves in place.
    fn logs_cmd(&self, at: &SlotRef, lines: u32, follow: bool) -> (String, Cmd) {
        let log = self.log_file(at);
        let cmd = tail_cmd(&log, lines, follow);
        (log, cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::local::LocalTransport;
    use crate::drivers::runtime::Launch;
    use crate::drivers::TransportError;

    #[test]
    fn commands_are_exact() {
        let cmd = start_cmd(
            "/s/prod/api",
            "/s/prod/api/blue.log",
            "/s/prod/api/blue.pid",
            "PORT=8000\n",
            &["/opt/api bin".into()],
        );
        assert_eq!(
            cmd.to_string(),
            r#"sh -c 'set -e; mkdir -p "$1"; chmod 700 "$1" "${1%/*}"; log=$2; pf=$3; shift 3; cd /; ss=$(command -v setsid); (umask 077; : >>"$log"); exec 3<&0; ( exec env -i PATH="$PATH" HOME="${HOME:-/}" "$ss" sh -c '\''while IFS= read -r KUBE_FREE_KV <&3; do export "$KUBE_FREE_KV"; done; unset KUBE_FREE_KV; exec 3<&-; exec "$@"'\'' kube-free-app "$@" ) >>"$log" 2>&1 </dev/null & pid=$!; exec 3<&-; umask 077; st=$(sed '\''s/.*)//'\'' "/proc/$pid/stat" | cut -d'\'' '\'' -f21) || st=0; printf '\''%s %s\n'\'' "$pid" "$st" >"$pf.$pid"; mv -f "$pf.$pid" "$pf"; echo "$pid"' kube-free-start /s/prod/api /s/prod/api/blue.log /s/prod/api/blue.pid '/opt/api bin'"#
        );
        assert_eq!(parse_pid_file("4242 31337\n"), Some((4242, 31337)));
        assert_eq!(parse_pid_file("4242"), None);
        assert!(cmd.changes);
    }

    #[test]
    fn logs_are_read_with_tail_from_the_slots_log_file() {
        let rt = runtime("/s");
        let (log, cmd) = rt.logs_cmd(&slot("blue"), 100, false);
        assert_eq!(log, "/s/test/sleeper/blue.log");
        assert_eq!(cmd.to_string(), "tail -n 100 /s/test/sleeper/blue.log");
        let (_, cmd) = rt.logs_cmd(&slot("green"), 5, true);
        assert_eq!(cmd.to_string(), "tail -n 5 -F /s/test/sleeper/green.log");
        assert!(!cmd.changes);
    }

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345 67 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn torn_instance_files_are_reported_not_trusted() {
        let (found, _) = parse_instances("/s/a/b/blue.json\n{\"env\":\"a\"\n");
        assert_eq!(found[0].0, "/s/a/b/blue.json");
        assert!(found[0].1.is_err());
        assert_eq!(
            slot_of_file("/s/", "/s/a/b/blue.json"),
            Some(("a".into(), "b".into(), "blue".into()))
        );
        assert_eq!(slot_of_file("/s", "/s/a/b.json"), None);
        assert_eq!(slot_of_file("/s", "/t/a/b/blue.json"), None);
    }

    fn runtime(state_dir: &str) -> ProcessRuntime {
        ProcessRuntime::new(Arc::new(LocalTransport::new("here")), state_dir)
    }

    fn slot(name: &str) -> SlotRef {
        SlotRef::new("test", "sleeper", "here", name)
    }

    /// A run killed right after the start script ran: a process, its pid file, no instance file.
    /// The next start stops that orphan before it starts the instance.
    #[tokio::test]
    async fn an_orphan_of_a_killed_start_is_found_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().to_str().unwrap();
        let rt = runtime(state_dir);
        let app_dir = crate::state::app_dir(state_dir, "test", "sleeper");
        let log = crate::state::log_file(state_dir, "test", "sleeper", "green");
        let pid_file = crate::state::pid_file(state_dir, "test", "sleeper", "green");
        let out = run_ok(
            rt.t(),
            &start_cmd(
                &app_dir,
                &log,
                &pid_file,
                "",
                &["sleep".into(), "30".into()],
            ),
            TIMEOUT,
        )
        .await
        .unwrap();
        let orphan: u32 = out.stdout_text().trim().parse().unwrap();
        assert!(std::path::Path::new(&format!("/proc/{orphan}")).exists());
        let record = rt.start(&sleeper("green")).await.unwrap();
        assert_ne!(record.pid, orphan);
        assert!(gone(orphan), "the orphan {orphan} still runs");
        assert!(rt.is_alive(&record).await.unwrap());
        assert_eq!(
            parse_pid_file(&std::fs::read_to_string(&pid_file).unwrap()),
            Some((record.pid, record.start_ticks))
        );
        rt.stop(&record, Duration::from_secs(5)).await.unwrap();
        assert!(!std::path::Path::new(&pid_file).exists());
    }

    /// Whether `pid` has ended (gone, or a zombie not reaped yet).
    fn gone(pid: u32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || parse_stat(&stat).is_some_and(|(s, _)| s == 'Z')
    }

    /// The local transport, counting the commands it runs.
    struct Counted(LocalTransport, std::sync::atomic::AtomicUsize);

    impl Counted {
        /// A process runtime in `state_dir` on a counting local transport, and that transport.
        fn runtime(state_dir: &std::path::Path) -> (ProcessRuntime, Arc<Counted>) {
            let counted = Arc::new(Counted(LocalTransport::new("here"), 0.into()));
            let rt = ProcessRuntime::new(counted.clone(), state_dir.to_str().unwrap());
            (rt, counted)
        }

        /// The commands run since the last time it was asked.
        fn runs(&self) -> usize {
            self.1.swap(0, std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl Transport for Counted {
        fn host(&self) -> &str {
            self.0.host()
        }
        async fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<Output, TransportError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.run(cmd, timeout).await
        }
        async fn stream(
            &self,
            cmd: &Cmd,
            to: tokio::sync::mpsc::Sender<crate::drivers::Line>,
        ) -> Result<Option<i32>, TransportError> {
            self.0.stream(cmd, to).await
        }
        async fn connect_unix(&self, path: &str) -> Result<tokio::net::UnixStream, TransportError> {
            self.0.connect_unix(path).await
        }
    }

    fn sleeper(slot_name: &str) -> StartSpec {
        StartSpec {
            at: slot(slot_name),
            version: "1".into(),
            revision: "abc".into(),
            port: 1,
            launch: Launch {
                env: vec![],
                command: vec!["/bin/sleep".into(), "30".into()],
                container: None,
            },
            spec: crate::desired::spec::Spec::example(),
            stop_timeout: Duration::from_secs(5),
        }
    }

    /// Observing a host's instances is one command, liveness included: the process table comes
    /// with the instance files. Only an instance that looks gone is asked about again.
    #[tokio::test]
    async fn instances_and_whether_they_run_are_read_in_one_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (rt, counted) = Counted::runtime(dir.path());
        let runs = || counted.runs();
        let blue = rt.start(&sleeper("blue")).await.unwrap();
        let green = rt.start(&sleeper("green")).await.unwrap();
        let alive = |found: Vec<Found>| -> Vec<(String, bool)> {
            let mut v: Vec<(String, bool)> = found
                .into_iter()
                .map(|f| match f {
                    Found::Record { record, alive } => (record.slot, alive),
                    Found::Unreadable { path, .. } => panic!("unreadable {path}"),
                })
                .collect();
            v.sort();
            v
        };
        runs();
        let found = alive(rt.instances().await.unwrap());
        assert_eq!(found, [("blue".into(), true), ("green".into(), true)]);
        assert_eq!(
            runs(),
            1,
            "one command for the listing and both liveness answers"
        );

        let kill = session_cmd(green.pid, green.start_ticks, Some("KILL"));
        run_ok(rt.t(), &kill, TIMEOUT).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rt.is_alive(&green).await.unwrap() {
            assert!(std::time::Instant::now() < deadline, "green did not go");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        runs();
        let found = alive(rt.instances().await.unwrap());
        assert_eq!(found, [("blue".into(), true), ("green".into(), false)]);
        assert_eq!(runs(), 2, "the listing, and the gone one asked again");
        rt.stop(&blue, Duration::from_secs(5)).await.unwrap();
        // Nothing listed: no process table either.
        let empty = tempfile::tempdir().unwrap();
        let out = run_ok(
            rt.t(),
            &list_instances_cmd(empty.path().to_str().unwrap()),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(out.stdout_text(), "");
    }

    /// A start is one command, and so is a stop; a start over a live instance starts nothing and
    /// says what runs there, in one command too.
    #[tokio::test]
    async fn a_start_and_a_stop_are_one_round_trip_each() {
        let dir = tempfile::tempdir().unwrap();
        let (rt, counted) = Counted::runtime(dir.path());
        let runs = || counted.runs();
        let Started::New(blue) = rt.start_unless_running(&sleeper("blue")).await.unwrap() else {
            panic!("blue was not started");
        };
        assert_eq!(runs(), 1, "one command for the whole start");
        assert_eq!(
            rt.instance(&slot("blue")).await.unwrap(),
            Some(blue.clone())
        );
        runs();
        let mut again = sleeper("blue");
        again.version = "2".into();
        assert_eq!(
            rt.start_unless_running(&again).await.unwrap(),
            Started::Running(blue.clone())
        );
        assert_eq!(runs(), 1);
        let err = rt.start(&again).await.unwrap_err();
        assert!(
            matches!(err, RuntimeError::Occupied { pid, .. } if pid == blue.pid),
            "{err}"
        );
        runs();
        rt.stop(&blue, Duration::from_secs(5)).await.unwrap();
        assert_eq!(runs(), 1, "one command for the whole stop");
        assert!(gone(blue.pid));
        assert_eq!(rt.instance(&slot("blue")).await.unwrap(), None);
    }

    /// An instance that ignores SIGTERM gets SIGKILL after its grace, within the one command.
    #[tokio::test]
    async fn an_instance_that_ignores_sigterm_is_killed_after_its_grace() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path().to_str().unwrap());
        let mut stubborn = sleeper("blue");
        stubborn.launch.command = vec![
            "sh".into(),
            "-c".into(),
            "trap '' TERM; exec sleep 30".into(),
        ];
        let record = rt.start(&stubborn).await.unwrap();
        let grace = Duration::from_millis(400);
        let began = std::time::Instant::now();
        rt.stop(&record, grace).await.unwrap();
        assert!(
            began.elapsed() >= grace,
            "stopped before its grace: {:?}",
            began.elapsed()
        );
        assert!(gone(record.pid), "{} survived", record.pid);
        let said = run_ok(
            rt.t(),
            &stop_script_cmd(&rt.files(&slot("blue")), &record, grace),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(said.stdout_text(), "", "nothing left to stop");
    }

    #[test]
    fn what_the_scripts_say_is_read_line_by_line() {
        assert_eq!(
            parse_said("orphan 12\nkilled 12\nstarted 40 500\n"),
            Some((
                Said::Started {
                    pid: 40,
                    start_ticks: 500
                },
                vec![("orphan".into(), 12), ("killed".into(), 12)]
            ))
        );
        assert_eq!(
            parse_said("taken\npid 7\ninode 99\npid 8\n"),
            Some((Said::Taken(vec![7, 8]), vec![]))
        );
        assert_eq!(
            parse_said("exited\nboom\nbang\n"),
            Some((Said::Exited("boom\nbang\n".into()), vec![]))
        );
        assert_eq!(
            parse_said("running\n{\"env\":1}\n"),
            Some((Said::Running("{\"env\":1}".into()), vec![]))
        );
        assert_eq!(parse_said(""), Some((Said::Stopped, vec![])));
        assert_eq!(
            parse_said("unkillable 9\n"),
            Some((Said::Unkillable(9), vec![]))
        );
        assert_eq!(parse_said("started x 1\n"), None);
        assert_eq!(parse_said("what\n"), None);
        // The record is cut around the two values the script fills in, and put back whole.
        let record = InstanceRecord {
            pid: 0,
            start_ticks: 0,
            argv: vec![r#"{"pid":0,"start_ticks":0}"#.into()],
            spec: Some(crate::desired::spec::Spec::example()),
            ..crate::testing::record("prod", "api", "blue", "1.0.0", 8000)
        };
        let (before, after) = record_around(&record);
        let whole = format!("{before}\"pid\":41,\"start_ticks\":77{after}");
        assert_eq!(
            parse_record(&whole).unwrap(),
            InstanceRecord {
                pid: 41,
                start_ticks: 77,
                ..record
            }
        );
    }

    #[test]
    fn a_process_table_tells_what_runs_as_the_session_script_does() {
        let stat = |pid: u32, state: char, session: u32, start_ticks: u64| ProcStat {
            pid,
            state,
            session,
            start_ticks,
        };
        assert_eq!(
            ProcStat::parse("4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345 67"),
            Some(stat(4242, 'S', 4242, 987654))
        );
        assert_eq!(ProcStat::parse("garbage"), None);
        // A line cut short by a line break in its command name: known by its pid only, and
        // what follows the break is no process.
        assert_eq!(ProcStat::parse("12 (torn"), Some(stat(12, '?', 0, 0)));
        assert_eq!(ProcStat::parse("name) S 1 12 12 0 -1 0"), None);
        assert!(!alive_in(
            &[stat(12, '?', 0, 0), stat(13, 'S', 12, 600)],
            12,
            500
        ));
        // The leader runs.
        assert!(alive_in(&[stat(10, 'S', 10, 500)], 10, 500));
        // Its pid was reused by a later process: not ours, whatever runs in that session.
        assert!(!alive_in(
            &[stat(10, 'S', 10, 900), stat(11, 'S', 10, 901)],
            10,
            500
        ));
        // The leader is a zombie or gone, a member of its session started since runs.
        assert!(alive_in(
            &[stat(10, 'Z', 10, 500), stat(11, 'S', 10, 501)],
            10,
            500
        ));
        assert!(alive_in(&[stat(11, 'R', 10, 501)], 10, 500));
        // Members that are zombies, or older than the leader (another session of that number).
        assert!(!alive_in(&[stat(11, 'Z', 10, 501)], 10, 500));
        assert!(!alive_in(&[stat(11, 'S', 10, 400)], 10, 500));
        assert!(!alive_in(&[], 10, 500));
        let (files, table) = parse_instances("/s/a/b/blue.json\n{}\nkube-free-processes\n10 (sh) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 500 1 1\n");
        assert_eq!(files.len(), 1);
        assert_eq!(table, [stat(10, 'S', 10, 500)]);
        // A record whose content is the marker is a torn record; the files after it still count.
        let (files, table) = parse_instances(&format!(
            "/s/a/b/blue.json\n{PROCESS_TABLE}\n/s/a/b/green.json\n{{}}\n{PROCESS_TABLE}\n"
        ));
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files[0].1.is_err() && table.is_empty());
    }

    /// The app's environment is the app's only: a `PATH` or a variable named like the start
    /// script's own does not change how the script runs.
    #[tokio::test]
    async fn the_environment_given_does_not_reach_the_start_script() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path().to_str().unwrap());
        let spec = StartSpec {
            at: slot("green"),
            version: "1".into(),
            revision: "abc".into(),
            port: 1,
            launch: Launch {
                env: vec![
                    "PATH=/nonexistent".into(),
                    "log=/nonexistent/log".into(),
                    "kf_kv=mine".into(),
                ],
                command: vec!["/bin/sleep".into(), "30".into()],
                container: None,
            },
            spec: crate::desired::spec::Spec::example(),
            stop_timeout: Duration::from_secs(5),
        };
        let record = rt.start(&spec).await.unwrap();
        let running = rt.recover(&slot("green")).await.unwrap().unwrap();
        for var in ["PATH=/nonexistent", "log=/nonexistent/log", "kf_kv=mine"] {
            assert!(running.environ.contains(&var.to_owned()), "{var}");
        }
        rt.stop(&record, Duration::from_secs(5)).await.unwrap();
    }

    /// A wrapper that did not `exec` its app, whose leader is gone: its children still run, so the
    /// instance is alive, and a stop ends every one of them.
    #[tokio::test]
    async fn a_stop_ends_the_whole_session_even_without_its_leader() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path().to_str().unwrap());
        let spec = StartSpec {
            at: slot("green"),
            version: "1".into(),
            revision: "abc".into(),
            port: 1,
            launch: Launch {
                env: vec![],
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "sleep 300 & sleep 301 & wait".into(),
                ],
                container: None,
            },
            spec: crate::desired::spec::Spec::example(),
            stop_timeout: Duration::from_secs(5),
        };
        let record = rt.start(&spec).await.unwrap();
        let members = rt.members(&record, None).await.unwrap();
        assert_eq!(members.len(), 3, "{members:?}");
        assert!(members.contains(&record.pid), "{members:?}");
        // The leader dies alone; its children carry on, and so does the instance.
        rt.t()
            .run(
                &Cmd::change(["kill", "-s", "KILL", &record.pid.to_string()]),
                TIMEOUT,
            )
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rt
            .members(&record, None)
            .await
            .unwrap()
            .contains(&record.pid)
        {
            assert!(std::time::Instant::now() < deadline, "the leader lives on");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let children = rt.members(&record, None).await.unwrap();
        assert_eq!(children.len(), 2, "{children:?}");
        assert!(rt.is_alive(&record).await.unwrap());
        rt.stop(&record, Duration::from_secs(5)).await.unwrap();
        assert!(!rt.is_alive(&record).await.unwrap());
        for pid in children {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            assert!(
                stat.is_empty() || parse_stat(&stat).is_some_and(|(s, _)| s == 'Z'),
                "child {pid} survived the stop: {stat}"
            );
        }
        // Another session's processes are never members (this test's own, for one).
        let me = InstanceRecord {
            pid: std::process::id(),
            start_ticks: 0,
            ..record
        };
        assert!(rt.members(&me, None).await.unwrap().is_empty());
    }

    /// Who else listens on an instance's port: nobody while it listens alone (or nobody does);
    /// a process of another session (here this test's own) is named.
    #[tokio::test]
    async fn strangers_on_the_port_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path().to_str().unwrap());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = |at: &str| {
            StartSpec {
            at: slot(at),
            version: "1".into(),
            revision: "abc".into(),
            port,
            launch: Launch {
                env: vec![],
                command: vec![
                    "perl".into(),
                    "-MIO::Socket::INET".into(),
                    "-e".into(),
                    "$s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => shift, Listen => 5) or die $!; sleep 30".into(),
                    port.to_string(),
                ],
                container: None,
            },
            spec: crate::desired::spec::Spec::example(),
            stop_timeout: Duration::from_secs(5),
        }
        };
        let record = rt.start(&listen("blue")).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the instance never listened: {}",
                std::fs::read_to_string(dir.path().join("test/sleeper/blue.log"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(rt.strangers_on_port(&record).await.unwrap(), None);
        rt.stop(&record, Duration::from_secs(5)).await.unwrap();
        assert_eq!(rt.strangers_on_port(&record).await.unwrap(), None);
        // An old server holds the port: nothing starts there, and the error says who holds it.
        let stranger = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let err = rt.start(&listen("green")).await.unwrap_err();
        assert!(
            matches!(err, RuntimeError::PortTaken { .. }) && !err.by_the_instance(),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("(pids {})", std::process::id())),
            "{err}"
        );
        // An instance that does not listen (yet) while the old server does: its probes would
        // reach the old one.
        let mut quiet = listen("green");
        quiet.port = 1;
        quiet.launch.command = vec!["sleep".into(), "30".into()];
        let record = InstanceRecord {
            port,
            ..rt.start(&quiet).await.unwrap()
        };
        assert_eq!(
            rt.strangers_on_port(&record).await.unwrap(),
            Some(vec![std::process::id()])
        );
        drop(stranger);
        rt.stop(&record, Duration::from_secs(5)).await.unwrap();
    }

    /// The app's environment holds what it is given, `PATH` and `HOME`: nothing of kube-free's own
    /// environment (here the test runner's, `CARGO_*` among it) or the SSH session's.
    #[tokio::test]
    async fn the_app_starts_with_a_clean_environment() {
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path().to_str().unwrap());
        let spec = StartSpec {
            at: slot("green"),
            version: "1".into(),
            revision: "abc".into(),
            port: 1,
            launch: Launch {
                env: vec!["GIVEN=yes".into()],
                command: vec!["sleep".into(), "30".into()],
                container: None,
            },
            spec: crate::desired::spec::Spec::example(),
            stop_timeout: Duration::from_secs(5),
        };
        let record = rt.start(&spec).await.unwrap();
        let mut environ = rt.recover(&slot("green")).await.unwrap().unwrap().environ;
        environ.sort();
        let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
        assert_eq!(
            environ,
            [
                "GIVEN=yes".to_owned(),
                format!("HOME={home}"),
                format!("PATH={}", std::env::var("PATH").unwrap()),
                // The shell that becomes the app exports its working directory.
                "PWD=/".to_owned(),
            ]
        );
        // Its log and directories are its owner's only.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let app_dir = crate::state::app_dir(dir.path().to_str().unwrap(), "test", "sleeper");
        assert_eq!(mode(&app_dir), 0o700);
        assert_eq!(mode(app_dir.rsplit_once('/').unwrap().0), 0o700);
        assert_eq!(mode(&format!("{app_dir}/green.log")), 0o600);
        rt.stop(&record, Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn start_check_and_stop_a_real_process() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().to_str().unwrap();
        let rt = runtime(state_dir);
        let spec = StartSpec {
            at: slot("blue"),
            version: "1".into(),
            revision: "abc".into(),
            port: 1,
            launch: Launch {
                env: vec![
                    "KUBE_FREE_SLOT=blue".into(),
                    "SECRET=a value with spaces; $(and shell)".into(),
                ],
                command: vec!["sleep".into(), "30".into()],
                container: None,
            },
            spec: crate::desired::spec::Spec::example(),
            stop_timeout: Duration::from_secs(5),
        };
        let record = rt.start(&spec).await.unwrap();
        // The environment is not on the command line, and reached the process as it is.
        assert_eq!(record.argv, ["sleep", "30"]);
        assert!(rt.is_alive(&record).await.unwrap());
        assert_eq!(
            rt.instance(&slot("blue")).await.unwrap(),
            Some(record.clone())
        );
        // The start script recorded the pid and the start time itself.
        let pid_file = crate::state::pid_file(state_dir, "test", "sleeper", "blue");
        assert_eq!(
            parse_pid_file(&std::fs::read_to_string(&pid_file).unwrap()),
            Some((record.pid, record.start_ticks))
        );
        assert_eq!(
            rt.instances().await.unwrap(),
            vec![Found::Record {
                record: record.clone(),
                alive: true
            }]
        );
        // What runs there, told by the host: its command line and environment.
        let running = rt.recover(&slot("blue")).await.unwrap().unwrap();
        assert_eq!(running.argv, ["sleep", "30"]);
        assert!(running.environ.contains(&"KUBE_FREE_SLOT=blue".to_owned()));
        assert!(running
            .environ
            .contains(&"SECRET=a value with spaces; $(and shell)".to_owned()));
        // A record whose start time does not match is not our process, even with a live pid.
        let impostor = InstanceRecord {
            start_ticks: record.start_ticks + 1,
            ..record.clone()
        };
        assert!(!rt.is_alive(&impostor).await.unwrap());
        rt.stop(&record, Duration::from_secs(5)).await.unwrap();
        assert!(!rt.is_alive(&record).await.unwrap());
        assert!(rt.instances().await.unwrap().is_empty());
        assert!(!std::path::Path::new(&pid_file).exists());
        assert_eq!(rt.recover(&slot("blue")).await.unwrap(), None);
        // A command that exits at once is a failed start, with its log.
        let bad = StartSpec {
            launch: Launch {
                env: vec![],
                command: vec!["sh".into(), "-c".into(), "echo boom >&2; exit 3".into()],
                container: None,
            },
            ..spec
        };
        let err = rt.start(&bad).await.unwrap_err();
        assert!(matches!(err, RuntimeError::ExitedAtOnce { .. }), "{err}");
        assert!(err.to_string().contains("boom"), "{err}");
        let (log, text) = rt.logs(&slot("blue"), 5).await.unwrap();
        assert!(log.ends_with("/test/sleeper/blue.log"), "{log}");
        assert!(text.contains("boom"), "{text}");
    }
}
