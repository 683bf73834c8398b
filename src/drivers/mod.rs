//! Drivers: every way kube-free touches the outside world, behind traits so that the planner and the
//! executor never see SSH, sockets or HTTP:
//! - [`Transport`] runs commands on a host (`ssh`, `local`), or streams their output line by line;
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
pub mod fenced;
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
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

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
    #[error("host {host:?}: `{cmd}` printed more than {} MiB", OUTPUT_LIMIT >> 20)]
    TooMuchOutput { host: String, cmd: String },
    /// A change refused on the host: this run does not hold the lease there any more.
    #[error("host {host:?}: {message}")]
    Fenced { host: String, message: String },
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

/// Most bytes of standard output, and of standard error, kept of one command: a host that prints
/// more fails the command rather than fill kube-free's memory.
pub const OUTPUT_LIMIT: usize = 32 << 20;

/// Reads a command's `stdout` and `stderr` to their ends, each up to `limit` bytes; `None` when
/// either has more (the rest is not read).
pub async fn collect(
    stdout: impl AsyncRead + Unpin,
    stderr: impl AsyncRead + Unpin,
    limit: usize,
) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    /// `Err(None)`: more than the limit, which ends the other read at once.
    async fn one(
        from: impl AsyncRead + Unpin,
        limit: usize,
    ) -> Result<Vec<u8>, Option<std::io::Error>> {
        let mut bytes = Vec::new();
        from.take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(Some)?;
        if bytes.len() > limit {
            return Err(None);
        }
        Ok(bytes)
    }
    match tokio::try_join!(one(stdout, limit), one(stderr, limit)) {
        Ok(both) => Ok(Some(both)),
        Err(None) => Ok(None),
        Err(Some(e)) => Err(e),
    }
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

/// Which output of a command a [`Line`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line a streamed command printed, without its newline (see [`Transport::stream`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub stream: Stream,
    pub text: Vec<u8>,
}

/// The longest line [`Transport::stream`] hands on whole; a longer one comes in pieces of this size.
pub const MAX_LINE: usize = 64 * 1024;

/// Cuts a byte stream into lines as its chunks arrive: whole lines (without their `\n`), a line
/// longer than [`MAX_LINE`] in pieces, and what is left at the end (a last line without `\n`).
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// The lines that `chunk` completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                lines.push(std::mem::take(&mut self.partial));
            } else {
                self.partial.push(b);
                if self.partial.len() == MAX_LINE {
                    lines.push(std::mem::take(&mut self.partial));
                }
            }
        }
        lines
    }

    /// The last line, when the stream did not end with a newline.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then_some(self.partial)
    }
}

/// Reads a command's stdout and stderr to their ends at once, sending each line to `to` as it is
/// complete. Returns `false` as soon as `to` is closed (nobody reads any more), `true` at the end
/// of both; a read error ends that output like its end.
pub async fn pump(
    stdout: impl AsyncRead + Unpin,
    stderr: impl AsyncRead + Unpin,
    to: &mpsc::Sender<Line>,
) -> bool {
    async fn one(
        mut from: impl AsyncRead + Unpin,
        stream: Stream,
        to: &mpsc::Sender<Line>,
    ) -> bool {
        let mut lines = LineSplitter::default();
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for text in lines.push(&buf[..n]) {
                if to.send(Line { stream, text }).await.is_err() {
                    return false;
                }
            }
        }
        match lines.finish() {
            Some(text) => to.send(Line { stream, text }).await.is_ok(),
            None => true,
        }
    }
    // Either side seeing a closed receiver ends both.
    let both = async {
        let (out, err) = tokio::join!(
            one(stdout, Stream::Stdout, to),
            one(stderr, Stream::Stderr, to)
        );
        out && err
    };
    tokio::select! {
        open = both => open,
        () = to.closed() => false,
    }
}

/// A way to run commands on one host.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// The host's name in the desired state.
    fn host(&self) -> &str;

    /// Runs `cmd`, waiting at most `timeout`. A non-zero exit is not an error here (see [`run_ok`]).
    async fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<Output, TransportError>;

    /// Runs `cmd` with no timeout, sending each line it prints on stdout or stderr to `to` as soon
    /// as it is complete, until it ends; returns its exit status (`None`: killed by a signal).
    /// When `to` is closed, the command is ended and `Ok(None)` returned. Dropping the future ends
    /// the command on this machine (the local process, or the SSH channel: a remote process that
    /// does not read its input then ends at its next write, with SIGPIPE). Never sent again after
    /// a lost connection: its output may have been seen.
    async fn stream(
        &self,
        cmd: &Cmd,
        to: mpsc::Sender<Line>,
    ) -> Result<Option<i32>, TransportError>;

    /// Opens a connection to a Unix socket on the host (the HAProxy admin socket).
    async fn connect_unix(&self, path: &str) -> Result<tokio::net::UnixStream, TransportError>;

    /// [`Transport::connect_unix`] for a change sent through the socket, with what must be held
    /// while it is sent: nothing here; a fenced transport holds the lease's lock on the host,
    /// checked, until the guard is dropped ([`fenced`]).
    async fn connect_unix_for_change(
        &self,
        path: &str,
    ) -> Result<(tokio::net::UnixStream, Option<Held>), TransportError> {
        Ok((self.connect_unix(path).await?, None))
    }

    /// Starts `cmd` with its standard input kept open and returns the first line it prints (within
    /// `timeout`) and a guard: dropping the guard closes its input and ends it on this machine.
    /// For a command that holds something on the host while kube-free acts.
    async fn hold(&self, cmd: &Cmd, timeout: Duration) -> Result<(String, Held), TransportError> {
        let _ = (cmd, timeout);
        Err(TransportError::Process {
            host: self.host().to_owned(),
            message: "this transport cannot hold a command open".into(),
        })
    }
}

/// What [`Transport::hold`] keeps running (the command and its open input) until dropped.
pub struct Held(pub Box<dyn Send>);

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

/// The first line `from` prints, within `timeout` (empty when it ends first).
pub async fn first_line(
    from: impl AsyncRead + Unpin,
    timeout: Duration,
) -> Result<String, std::io::Error> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(from);
    tokio::time::timeout(timeout, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(line.trim_end().to_owned())
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

    #[test]
    fn lines_are_cut_as_chunks_arrive() {
        let mut split = LineSplitter::default();
        assert_eq!(split.push(b"one\ntw"), [b"one".to_vec()]);
        assert!(split.push(b"o").is_empty());
        assert_eq!(split.push(b"\n\nthree"), [b"two".to_vec(), Vec::new()]);
        assert_eq!(split.finish(), Some(b"three".to_vec()));
        assert_eq!(LineSplitter::default().finish(), None);
        // A line without end comes in pieces of MAX_LINE.
        let mut split = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE * 2 + 3];
        let lines = split.push(&long);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(split.finish(), Some(b"xxx".to_vec()));
    }
}
