//! The SSH transport: one multiplexed OpenSSH master connection per host (the `openssh` crate),
//! reused for every command of a run, with strict host-key checking against a known_hosts file and
//! connect and command timeouts. A Unix socket on the host (the HAProxy admin socket) is reached by
//! forwarding it to a local socket through the same master.
//!
//! A master that has not carried a command for a second is checked before the next one is sent,
//! and a dead one is replaced by a new connection (the command never ran, so sending it is safe
//! whatever it does). A connection lost while a command runs is retried
//! on a new connection only when the command is read-only ([`Cmd::changes`] is false); a command
//! that changes the host may or may not have run, so it fails with [`TransportError::Unreachable`]
//! and the step that sent it re-observes on the next run.
//!
//! A streamed command (`kube-free logs`) runs on the master like any other, without a timeout; it
//! is never sent again after a lost connection, as its output may already have been seen.

use super::{pump, Cmd, Line, Output, Transport, TransportError};
use crate::error::chain;
use openssh::{KnownHosts, Session, SessionBuilder, Socket, Stdio};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Mutex, RwLock};

/// Attempts to open a new master connection after the old one was lost (each within the connect
/// timeout), and the pause before the second (then twice, three times that).
const RECONNECT_ATTEMPTS: u32 = 4;
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// Times a read-only command is sent again after its connection was lost while it ran.
const READ_RETRIES: u32 = 2;
/// How long a master that just carried a command counts as alive without asking it (`ssh -O check`
/// is a process of its own: not one per command).
const TRUST_FOR: Duration = Duration::from_secs(1);

/// How to reach one host.
#[derive(Clone, Debug)]
pub struct SshTarget {
    pub host: String,
    pub address: String,
    pub user: String,
    pub port: u16,
}

/// Settings shared by every connection of a run.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// known_hosts file used with `StrictHostKeyChecking=yes`; `None`: the user's own files.
    pub known_hosts: Option<PathBuf>,
    pub identity_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Directory for control sockets and forwarded sockets (short path: Unix sockets are limited).
    pub runtime_dir: PathBuf,
}

/// The master connection of the moment and its generation (raised by each reconnect).
type Master = (u64, Arc<Session>);

pub struct SshTransport {
    target: SshTarget,
    options: SshOptions,
    master: RwLock<Master>,
    /// Remote socket path → (generation of the master that forwards it, local socket path).
    forwards: Mutex<HashMap<String, (u64, PathBuf)>>,
    /// Local forwarded sockets made so far (each gets a name of its own).
    forwarded: std::sync::atomic::AtomicUsize,
    /// When the master last carried a command or answered a check.
    last_alive: std::sync::Mutex<Option<std::time::Instant>>,
}

impl SshTransport {
    /// Opens the master connection.
    pub async fn connect(
        target: &SshTarget,
        options: &SshOptions,
    ) -> Result<SshTransport, TransportError> {
        let session = open(target, options).await?;
        Ok(SshTransport {
            target: target.clone(),
            options: options.clone(),
            master: RwLock::new((0, Arc::new(session))),
            forwards: Mutex::new(HashMap::new()),
            forwarded: std::sync::atomic::AtomicUsize::new(0),
            last_alive: std::sync::Mutex::new(None),
        })
    }

    /// Closes the master connection.
    pub async fn close(self) {
        let (_, session) = self.master.into_inner();
        if let Ok(session) = Arc::try_unwrap(session) {
            let _ = session.close().await;
        }
    }

    /// A live master: the current one, or a new one if the current one is found dead. One that
    /// worked within [`TRUST_FOR`] is not asked again.
    async fn live(&self) -> Result<Master, TransportError> {
        let master = self.master.read().await.clone();
        let recent = self
            .last_alive
            .lock()
            .expect("not poisoned")
            .is_some_and(|t| t.elapsed() < TRUST_FOR);
        if recent {
            return Ok(master);
        }
        if master.1.check().await.is_ok() {
            self.alive(true);
            return Ok(master);
        }
        self.reconnect(master.0).await
    }

    /// Notes that the master just worked (`true`) or was lost (`false`: the next command checks it).
    fn alive(&self, yes: bool) {
        *self.last_alive.lock().expect("not poisoned") = yes.then(std::time::Instant::now);
    }

    /// Replaces the master of generation `dead` (unless another task already did).
    async fn reconnect(&self, dead: u64) -> Result<Master, TransportError> {
        let mut master = self.master.write().await;
        if master.0 != dead {
            return Ok(master.clone());
        }
        tracing::warn!(host = %self.target.host, "SSH connection lost; connecting again");
        let mut attempt = 1;
        let session = loop {
            match open(&self.target, &self.options).await {
                Ok(session) => break session,
                Err(e) if attempt >= RECONNECT_ATTEMPTS => return Err(e),
                Err(_) => {
                    tokio::time::sleep(RECONNECT_PAUSE * attempt).await;
                    attempt += 1;
                }
            }
        };
        let (_, old) = std::mem::replace(&mut *master, (dead + 1, Arc::new(session)));
        let new = master.clone();
        drop(master);
        // Closing the dead master waits for `ssh -O exit`: not while others wait for the lock.
        if let Ok(old) = Arc::try_unwrap(old) {
            let _ = old.close().await;
        }
        Ok(new)
    }

    fn unreachable(&self, e: &openssh::Error) -> TransportError {
        TransportError::Unreachable {
            host: self.target.host.clone(),
            message: chain(e),
        }
    }

    /// Starts `cmd` on `session` with its stdout and stderr piped, writes its stdin (if any) and
    /// closes it.
    async fn spawn_on<'s>(
        &self,
        session: &'s Session,
        cmd: &Cmd,
    ) -> Result<openssh::Child<&'s Session>, TransportError> {
        let line = cmd.to_string();
        let mut command = session.raw_command(&line);
        command
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().await.map_err(|e| self.unreachable(&e))?;
        if let (Some(bytes), Some(mut stdin)) = (&cmd.stdin, child.stdin().take()) {
            stdin
                .write_all(bytes)
                .await
                .map_err(|source| TransportError::Io {
                    host: self.target.host.clone(),
                    what: format!("cannot write to `{line}`"),
                    source,
                })?;
        }
        Ok(child)
    }

    /// Runs `cmd` once on `session`.
    async fn run_on(&self, session: &Session, cmd: &Cmd) -> Result<Output, TransportError> {
        let line = cmd.to_string();
        let child = self.spawn_on(session, cmd).await?;
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| self.unreachable(&e))?;
        // ssh reports a lost connection as exit 255.
        if out.status.code() == Some(255) && session.check().await.is_err() {
            return Err(TransportError::Unreachable {
                host: self.target.host.clone(),
                message: format!("connection lost during `{line}`"),
            });
        }
        Ok(Output {
            status: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// Opens a master connection to `target`.
async fn open(target: &SshTarget, options: &SshOptions) -> Result<Session, TransportError> {
    let mut builder = SessionBuilder::default();
    builder
        .user(target.user.clone())
        .port(target.port)
        .known_hosts_check(KnownHosts::Strict)
        .connect_timeout(options.connect_timeout)
        .server_alive_interval(Duration::from_secs(5))
        .control_directory(&options.runtime_dir);
    if let Some(kh) = &options.known_hosts {
        builder.user_known_hosts_file(kh);
    }
    if let Some(key) = &options.identity_file {
        builder.keyfile(key);
    }
    builder
        .connect(&target.address)
        .await
        .map_err(|e| TransportError::Unreachable {
            host: target.host.clone(),
            message: format!(
                "ssh {}@{}:{}: {}",
                target.user,
                target.address,
                target.port,
                chain(&e)
            ),
        })
}

#[async_trait::async_trait]
impl Transport for SshTransport {
    fn host(&self) -> &str {
        &self.target.host
    }

    async fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<Output, TransportError> {
        tracing::debug!(host = %self.target.host, changes = cmd.changes, cmd = %cmd, "command");
        let work = async {
            let mut retries = 0;
            loop {
                let (generation, session) = self.live().await?;
                let result = self.run_on(&session, cmd).await;
                self.alive(!matches!(result, Err(TransportError::Unreachable { .. })));
                match result {
                    Err(TransportError::Unreachable { message, .. })
                        if !cmd.changes && retries < READ_RETRIES =>
                    {
                        retries += 1;
                        tracing::warn!(host = %self.target.host, cmd = %cmd, error = %message, "connection lost during a read-only command; sending it again");
                        self.reconnect(generation).await?;
                    }
                    Err(TransportError::Unreachable { host, message }) if cmd.changes => {
                        return Err(TransportError::Unreachable {
                            host,
                            message: format!("{message} (not sent again: it changes the host)"),
                        })
                    }
                    result => return result,
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| TransportError::Timeout {
                host: self.target.host.clone(),
                cmd: cmd.to_string(),
                timeout,
            })?
    }

    /// On the master of the moment, never sent again: what it printed may have been seen. Dropping
    /// it kills the local `ssh` client of the command, which closes its channel.
    async fn stream(
        &self,
        cmd: &Cmd,
        to: mpsc::Sender<Line>,
    ) -> Result<Option<i32>, TransportError> {
        tracing::debug!(host = %self.target.host, changes = cmd.changes, cmd = %cmd, "streamed command");
        let (_, session) = self.live().await?;
        let line = cmd.to_string();
        let mut child = self.spawn_on(&session, cmd).await?;
        self.alive(true);
        let (Some(stdout), Some(stderr)) = (child.stdout().take(), child.stderr().take()) else {
            unreachable!("stdout and stderr are piped");
        };
        if !pump(stdout, stderr, &to).await {
            // Dropping the child kills its `ssh` client.
            return Ok(None);
        }
        let status = child.wait().await.map_err(|e| self.unreachable(&e))?;
        // ssh reports a lost connection as exit 255.
        if status.code() == Some(255) && session.check().await.is_err() {
            self.alive(false);
            return Err(TransportError::Unreachable {
                host: self.target.host.clone(),
                message: format!("connection lost during `{line}`"),
            });
        }
        Ok(status.code())
    }

    async fn connect_unix(&self, path: &str) -> Result<tokio::net::UnixStream, TransportError> {
        let (generation, session) = self.live().await?;
        let mut forwards = self.forwards.lock().await;
        let local = match forwards.get(path) {
            Some((g, local)) if *g == generation => local.clone(),
            _ => {
                let n = self
                    .forwarded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let local = self
                    .options
                    .runtime_dir
                    .join(format!("fwd-{}-{n}.sock", self.target.host));
                let _ = std::fs::remove_file(&local);
                session
                    .request_port_forward(
                        openssh::ForwardType::Local,
                        Socket::UnixSocket {
                            path: local.as_path().into(),
                        },
                        Socket::UnixSocket {
                            path: Path::new(path).into(),
                        },
                    )
                    .await
                    .map_err(|e| self.unreachable(&e))?;
                forwards.insert(path.to_owned(), (generation, local.clone()));
                local
            }
        };
        tokio::net::UnixStream::connect(&local)
            .await
            .map_err(|source| TransportError::Io {
                host: self.target.host.clone(),
                what: format!(
                    "cannot connect to {path} (forwarded to {})",
                    local.display()
                ),
                source,
            })
    }
}
