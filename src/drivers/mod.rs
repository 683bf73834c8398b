//! Drivers: every way kube-free touches the outside world, behind traits so that the planner and the
//! executor never see SSH, sockets or HTTP:
//! - [`Transport`] runs commands on a host (`ssh`, `local`);
//! - [`Balancer`] is a traffic layer (`haproxy`, `nginx` in two modes);
//! - [`Runtime`] runs app instances on a host (`process`);
//! - [`Prober`] asks an instance whether it is ready (`probe`, over HTTP);
//! - [`Ledger`] keeps what runs share on a balancer host: rollout records and the lease (`ledger`).
//!
//! Remote work is expressed as [`Cmd`] values (argv, built by pure functions in `process`,
//! `haproxy`, `files` and `lease`) that a [`Transport`] runs; tests compare them exactly. Which
//! balancer and runtime drive what is chosen from the desired state ([`balancer::for_balancer`],
//! [`runtime::Kind::of`]). Fakes of every trait for fast tests are in `fake` (tests only).

pub mod balancer;
pub mod docker;
#[cfg(test)]
pub mod fake;
pub mod files;
pub mod haproxy;
pub mod lease;
pub mod ledger;
pub mod local;
pub mod nginx;
pub mod probe;
pub mod process;
pub mod runtime;
pub mod ssh;

pub use balancer::{Balancer, BalancerError, Change};
pub use ledger::{Ledger, LedgerError};
pub use probe::{ProbeError, Prober};
pub use runtime::{Runtime, RuntimeError};

use std::fmt;
use std::time::Duration;

/// One command to run on a host: argv (never a shell string), optional stdin, and whether it changes
/// anything (read-only commands may be retried after a dropped connection; changing ones may not).
#[derive(Clone, PartialEq, Eq)]
pub struct Cmd {
    pub argv: Vec<String>,
    /// What the command reads (an env file, a record): may hold secrets, so it is never shown.
    pub stdin: Option<Vec<u8>>,
    pub changes: bool,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmd")
            .field("argv", &self.argv)
            .field(
                "stdin",
                &self.stdin.as_ref().map(|b| format!("<{} bytes>", b.len())),
            )
            .field("changes", &self.changes)
            .finish()
    }
}

impl Cmd {
    /// A command that only reads.
    pub fn read<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Cmd {
        Cmd {
            argv: argv.into_iter().map(Into::into).collect(),
            stdin: None,
            changes: false,
        }
    }

    /// A command that changes something on the host.
    pub fn change<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Cmd {
        Cmd {
            changes: true,
            ..Cmd::read(argv)
        }
    }

    pub fn with_stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }
}

/// Quotes one word for a POSIX shell (what sshd hands the command line to).
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if safe {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self.argv.iter().map(|w| shell_quote(w)).collect();
        f.write_str(&words.join(" "))
    }
}

/// What a finished command printed and how it exited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit status; `None` when killed by a signal.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach host {host:?}: {message}")]
    Unreachable { host: String, message: String },
    #[error("host {host:?}: `{cmd}` did not finish within {}", crate::desired::duration::format(*.timeout))]
    Timeout {
        host: String,
        cmd: String,
        timeout: Duration,
    },
    #[error("host {host:?}: `{cmd}` failed ({}): {stderr}", .status.map_or("killed by a signal".to_owned(), |s| format!("exit {s}")))]
    Failed {
        host: String,
        cmd: String,
        status: Option<i32>,
        stderr: String,
    },
    #[error("host {host:?}: {message}")]
    Process { host: String, message: String },
    #[error("host {host:?}: {what}")]
    Io {
        host: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl TransportError {
    /// Whether contact with the host was lost: it could not be reached, or a command did not
    /// finish in time (so a change it makes may or may not have happened).
    pub fn lost_contact(&self) -> bool {
        matches!(
            self,
            TransportError::Unreachable { .. } | TransportError::Timeout { .. }
        )
    }
}

/// A way to run commands on one host.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// The host's name in the desired state.
    fn host(&self) -> &str;

    /// Runs `cmd`, waiting at most `timeout`. A non-zero exit is not an error here (see [`run_ok`]).
    async fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<Output, TransportError>;

    /// Opens a connection to a Unix socket on the host (the HAProxy admin socket).
    async fn connect_unix(&self, path: &str) -> Result<tokio::net::UnixStream, TransportError>;
}

/// Runs `cmd` and fails unless it exits 0.
pub async fn run_ok(
    t: &dyn Transport,
    cmd: &Cmd,
    timeout: Duration,
) -> Result<Output, TransportError> {
    let out = t.run(cmd, timeout).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(TransportError::Failed {
            host: t.host().to_owned(),
            cmd: cmd.to_string(),
            status: out.status,
            stderr: out.stderr_text(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_display_as_quoted_shell_words() {
        let cmd = Cmd::change(["kill", "-TERM", "123"]);
        assert_eq!(cmd.to_string(), "kill -TERM 123");
        let cmd = Cmd::read(["sh", "-c", "echo \"$1\"", "it's"]);
        assert_eq!(cmd.to_string(), r#"sh -c 'echo "$1"' 'it'\''s'"#);
        assert_eq!(shell_quote(""), "''");
    }
}
