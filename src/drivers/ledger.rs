//! The [`Ledger`] trait: what runs share on a balancer host — the rollout records
//! (`rollouts/<env>/<app>.json`), the lease (`lock`), the suspensions (`suspensions.json`), the
//! last commit applied (`applied.json`) and the audit log (`audit.log`) — and [`HostLedger`], which
//! keeps them as files under that host's `state_dir` through its transport. Records are bytes here:
//! what they say is the reconciler's to judge (a torn record is not trusted); a record is replaced
//! only if it is still what its writer read (compare-and-swap on a [`Revision`]); the audit log
//! only grows, a line at a time.

use super::files::{
    append_line_cmd, parse_swap, read_file_cmd, swap_record_cmd, tail_bytes_cmd, write_file_cmd,
    Swap,
};
use super::lease::{self, Answer};
use super::{run_ok, Transport, TransportError};
use crate::state::Revision;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);

/// The most of the audit log read at once: its last 16 MiB (tens of thousands of lines).
pub const AUDIT_READ: usize = 16 << 20;

/// One operation on the lease (see [`lease`] for what each does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOp {
    /// Take it for `run_id`, unless another run holds one that has not expired.
    Acquire {
        run_id: String,
        ttl_secs: u64,
        holder_host: String,
        pid: u32,
    },
    /// Extend it, if `run_id` still holds it at `epoch`.
    Renew {
        run_id: String,
        ttl_secs: u64,
        epoch: u64,
    },
    /// Whether `run_id` still holds it at `epoch` (fencing).
    Check { run_id: String, epoch: u64 },
    /// Give it back, if `run_id` holds it.
    Release { run_id: String },
}

/// What [`Ledger::rollouts`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollouts {
    /// The environments with rollout records (the entries of `rollouts/`, dot files aside).
    pub envs: Vec<String>,
    /// Each record's bytes by (env, app); an empty file is no record.
    pub records: std::collections::BTreeMap<(String, String), Vec<u8>>,
}

/// Prints `env NAME` for each entry of the rollouts directory `$1` (what `ls -A` lists there but
/// dot files), then `record ENV/APP.json BASE64` for each record file: its bytes exactly (coreutils'
/// or BusyBox's `base64`, its lines joined), each file opened once.
pub fn rollouts_cmd(dir: &str) -> super::Cmd {
    super::Cmd::read([
        "sh",
        "-c",
        r#"d=$1; [ -d "$d" ] || exit 0; for e in "$d"/*; do [ -e "$e" ] && printf 'env %s\n' "${e##*/}"; done; for f in "$d"/*/*.json; do [ -f "$f" ] || continue; b=$(base64 <"$f") || exit 1; printf 'record %s %s\n' "${f#"$d"/}" "$(printf '%s' "$b" | tr -d '\n')"; done; :"#,
        "kube-free-rollouts",
        dir,
    ])
}

/// The output of [`rollouts_cmd`]. A line it cannot read (a file whose name holds a line break,
/// which no environment or app can be named) is passed over.
pub fn parse_rollouts(text: &str) -> Rollouts {
    use base64::{engine::general_purpose::STANDARD, Engine as _};
    let mut found = Rollouts::default();
    for line in text.lines() {
        if let Some(env) = line.strip_prefix("env ") {
            found.envs.push(env.to_owned());
            continue;
        }
        let record = || {
            let (file, encoded) = line.strip_prefix("record ")?.rsplit_once(' ')?;
            let (env, app) = file.strip_suffix(".json")?.split_once('/')?;
            let bytes = STANDARD.decode(encoded).ok()?;
            Some(((env.to_owned(), app.to_owned()), bytes))
        };
        match record() {
            Some((key, bytes)) if !bytes.is_empty() => {
                found.records.insert(key, bytes);
            }
            Some(_) => {}
            None => tracing::debug!(line, "not a line of the rollout records; passed over"),
        }
    }
    found
}

/// Where runs keep what they share, on one balancer host.
///
/// Promises: a record (and the suspensions file) is written whole or not at all (a reader never sees half of one); a
/// rollout record only over the revision its writer read; lease
/// operations are atomic with respect to each other across every machine that runs kube-free,
/// and every time in them is the balancer host's clock.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// The balancer host.
    fn host(&self) -> &str;

    /// Where the rollout record of `env`/`app` is, for messages.
    fn rollout_file(&self, env: &str, app: &str) -> String;

    /// The rollout record's bytes; `None` when there is none.
    async fn read_rollout(&self, env: &str, app: &str) -> Result<Option<Vec<u8>>, LedgerError>;

    /// Every rollout record here, and the environments with records (the directories of
    /// `rollouts/`: those some desired state using this host's balancers rolled out), read at
    /// once: what observing the host reads of it, in one round trip.
    async fn rollouts(&self) -> Result<Rollouts, LedgerError>;

    /// Replaces the rollout record if it still has the revision `expected` (what its writer read),
    /// checked and replaced atomically with respect to every other writer; [`Swap::Changed`], and
    /// nothing written, when it changed since.
    async fn write_rollout(
        &self,
        env: &str,
        app: &str,
        expected: &Revision,
        bytes: &[u8],
    ) -> Result<Swap, LedgerError>;

    /// Runs a lease operation and returns what the lease says now.
    async fn lease(&self, op: &LeaseOp) -> Result<Answer, LedgerError>;

    /// Where the suspensions are kept, for messages.
    fn suspensions_file(&self) -> String;

    /// The suspensions file's bytes (`kube-free suspend`); `None` when there is none.
    async fn read_suspensions(&self) -> Result<Option<Vec<u8>>, LedgerError>;

    /// Replaces the suspensions file.
    async fn write_suspensions(&self, bytes: &[u8]) -> Result<(), LedgerError>;

    /// Where the last commit applied is kept, for messages.
    fn applied_file(&self) -> String;

    /// The last-applied file's bytes; `None` when there is none.
    async fn read_applied(&self) -> Result<Option<Vec<u8>>, LedgerError>;

    /// Replaces the last-applied file.
    async fn write_applied(&self, bytes: &[u8]) -> Result<(), LedgerError>;

    /// Where the audit log is kept, for messages.
    fn audit_file(&self) -> String;

    /// Appends `line` (one line, without its newline) to the audit log, atomically with respect to
    /// every other writer on the host (the lines of two runs never mix), creating it its owner's
    /// only (0600).
    async fn append_audit(&self, line: &str) -> Result<(), LedgerError>;

    /// The audit log's lines, at most its last [`AUDIT_READ`] bytes of them (a line cut there is
    /// left out); `None` when there is none.
    async fn read_audit(&self) -> Result<Option<Vec<u8>>, LedgerError>;
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("lease on {host}: unexpected answer {answer:?}")]
    Unexpected { host: String, answer: String },
    #[error("writing a record on {host}: unexpected answer {answer:?}")]
    UnexpectedSwap { host: String, answer: String },
}

impl LedgerError {
    /// Whether contact with the balancer host was lost (see [`TransportError::lost_contact`]).
    pub fn lost_contact(&self) -> bool {
        matches!(self, LedgerError::Transport(e) if e.lost_contact())
    }
}

/// The ledger as files on a balancer host.
pub struct HostLedger {
    transport: Arc<dyn Transport>,
    state_dir: String,
}

impl HostLedger {
    pub fn new(transport: Arc<dyn Transport>, state_dir: &str) -> HostLedger {
        HostLedger {
            transport,
            state_dir: state_dir.to_owned(),
        }
    }

    /// The file at `path`; `None` when there is none (or it is empty).
    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        let out = run_ok(self.transport.as_ref(), &read_file_cmd(path), TIMEOUT).await?;
        Ok((!out.stdout.is_empty()).then_some(out.stdout))
    }

    /// Writes the file at `path` whole ([`write_file_cmd`]).
    async fn write(&self, path: &str, bytes: &[u8]) -> Result<(), LedgerError> {
        run_ok(
            self.transport.as_ref(),
            &write_file_cmd(path, bytes),
            TIMEOUT,
        )
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Ledger for HostLedger {
    fn host(&self) -> &str {
        self.transport.host()
    }

    fn rollout_file(&self, env: &str, app: &str) -> String {
        crate::state::rollout_file(&self.state_dir, env, app)
    }

    async fn read_rollout(&self, env: &str, app: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        self.read(&self.rollout_file(env, app)).await
    }

    async fn rollouts(&self) -> Result<Rollouts, LedgerError> {
        let cmd = rollouts_cmd(&crate::state::rollouts_dir(&self.state_dir));
        let out = run_ok(self.transport.as_ref(), &cmd, TIMEOUT).await?;
        Ok(parse_rollouts(&out.stdout_text()))
    }

    async fn write_rollout(
        &self,
        env: &str,
        app: &str,
        expected: &Revision,
        bytes: &[u8],
    ) -> Result<Swap, LedgerError> {
        let path = self.rollout_file(env, app);
        let mutex = format!("{}.mutex", lease::lock_file(&self.state_dir));
        let cmd = swap_record_cmd(&path, &mutex, expected, bytes);
        let out = run_ok(self.transport.as_ref(), &cmd, TIMEOUT).await?;
        parse_swap(&out.stdout_text()).ok_or_else(|| LedgerError::UnexpectedSwap {
            host: self.host().to_owned(),
            answer: out.stdout_text().trim().to_owned(),
        })
    }

    fn suspensions_file(&self) -> String {
        crate::state::suspensions_file(&self.state_dir)
    }

    async fn read_suspensions(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        self.read(&self.suspensions_file()).await
    }

    async fn write_suspensions(&self, bytes: &[u8]) -> Result<(), LedgerError> {
        self.write(&self.suspensions_file(), bytes).await
    }

    fn applied_file(&self) -> String {
        crate::state::applied_file(&self.state_dir)
    }

    async fn read_applied(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        self.read(&self.applied_file()).await
    }

    async fn write_applied(&self, bytes: &[u8]) -> Result<(), LedgerError> {
        self.write(&self.applied_file(), bytes).await
    }

    fn audit_file(&self) -> String {
        crate::state::audit_file(&self.state_dir)
    }

    async fn append_audit(&self, line: &str) -> Result<(), LedgerError> {
        let mutex = format!("{}.mutex", lease::lock_file(&self.state_dir));
        let cmd = append_line_cmd(&self.audit_file(), &mutex, line.as_bytes());
        run_ok(self.transport.as_ref(), &cmd, TIMEOUT).await?;
        Ok(())
    }

    async fn read_audit(&self) -> Result<Option<Vec<u8>>, LedgerError> {
        // One byte more than kept: whether the first line kept is whole.
        let cmd = tail_bytes_cmd(&self.audit_file(), AUDIT_READ + 1);
        let mut bytes = run_ok(self.transport.as_ref(), &cmd, TIMEOUT).await?.stdout;
        // The file is longer than what is kept: up to its first newline, the rest of a line cut.
        if bytes.len() > AUDIT_READ {
            let end = bytes
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |p| p + 1);
            bytes.drain(..end);
        }
        Ok((!bytes.is_empty()).then_some(bytes))
    }

    async fn lease(&self, op: &LeaseOp) -> Result<Answer, LedgerError> {
        let path = lease::lock_file(&self.state_dir);
        let cmd = match op {
            LeaseOp::Acquire {
                run_id,
                ttl_secs,
                holder_host,
                pid,
            } => lease::acquire_cmd(&path, run_id, *ttl_secs, holder_host, *pid),
            LeaseOp::Renew {
                run_id,
                ttl_secs,
                epoch,
            } => lease::renew_cmd(&path, run_id, *ttl_secs, *epoch),
            LeaseOp::Check { run_id, epoch } => lease::check_cmd(&path, run_id, *epoch),
            LeaseOp::Release { run_id } => lease::release_cmd(&path, run_id),
        };
        let out = run_ok(self.transport.as_ref(), &cmd, TIMEOUT).await?;
        lease::parse_answer(&out.stdout_text()).ok_or_else(|| LedgerError::Unexpected {
            host: self.host().to_owned(),
            answer: out.stdout_text().trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::local::LocalTransport;

    /// Every rollout record of a host in one read, byte for byte, through the real transport:
    /// what observation reads; and what each record read alone says agrees with it.
    #[tokio::test]
    async fn every_rollout_record_is_read_at_once_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ledger = HostLedger::new(
            Arc::new(LocalTransport::new("here")),
            state.to_str().unwrap(),
        );
        // No directory yet: nothing, not an error.
        assert_eq!(ledger.rollouts().await.unwrap(), Rollouts::default());
        let rollouts = state.join("rollouts");
        let pretty = b"{\n  \"env\": \"prod\",\n  \"note\": \"a line\\nbreak, spaces  and \\u00e9 \xc3\xa9\"\n}\n";
        for (file, bytes) in [
            ("prod/api.json", &pretty[..]),
            ("prod/web.json", b"{}"),
            ("stage/api.json", b""),
            ("stage/notes.txt", b"not a record"),
            (".hidden/api.json", b"{}"),
        ] {
            let path = rollouts.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let found = ledger.rollouts().await.unwrap();
        assert_eq!(found.envs, ["prod", "stage"]);
        assert_eq!(
            found.records.keys().collect::<Vec<_>>(),
            [
                &("prod".to_owned(), "api".to_owned()),
                &("prod".to_owned(), "web".to_owned())
            ]
        );
        assert_eq!(found.records[&("prod".into(), "api".into())], pretty);
        // The environments are the directory's entries, as `ls -A` lists them, dot files aside.
        let listed = std::process::Command::new("ls")
            .arg("-1A")
            .arg(&rollouts)
            .output()
            .unwrap();
        let listed: Vec<String> = String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('.'))
            .map(str::to_owned)
            .collect();
        assert_eq!(found.envs, listed);
        for ((env, app), bytes) in &found.records {
            assert_eq!(
                ledger.read_rollout(env, app).await.unwrap().as_ref(),
                Some(bytes)
            );
        }
        // A line it cannot read is passed over; the others count.
        let found = parse_rollouts(
            "record prod/api.json !!!\nwhat\nenv prod\nrecord prod/web.json e30=\nrecord prod/x.json \n",
        );
        assert_eq!(found.envs, ["prod"]);
        assert_eq!(
            found.records,
            [(("prod".to_owned(), "web".to_owned()), b"{}".to_vec())].into()
        );
    }

    /// The audit log through the real transport of a `transport: local` host: lines appended
    /// whole and read back, the file its owner's only, nothing read when there is none.
    #[tokio::test]
    async fn the_audit_log_is_appended_and_read_through_the_transport() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ledger = HostLedger::new(
            Arc::new(LocalTransport::new("here")),
            state.to_str().unwrap(),
        );
        assert_eq!(ledger.read_audit().await.unwrap(), None);
        ledger.append_audit(r#"{"n":1}"#).await.unwrap();
        ledger.append_audit(r#"{"n":2}"#).await.unwrap();
        assert_eq!(
            ledger.audit_file(),
            format!("{}/audit.log", state.display())
        );
        assert_eq!(
            ledger.read_audit().await.unwrap().unwrap(),
            b"{\"n\":1}\n{\"n\":2}\n"
        );
        let mode = std::fs::metadata(state.join("audit.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
