//! The SSH transport: one multiplexed OpenSSH master connection per host (the `openssh` crate),
//! reused for every command of a run (each sent over the master's control socket by openssh's
//! native mux client: no `ssh` process per command), with kube-free's own client settings
//! ([`client_config`], no `~/.ssh/config`), strict host-key checking against a known_hosts file,
//! connect and command timeouts, and masters that exit on their own when idle
//! ([`CONTROL_PERSIST`]). A Unix socket on the host (the HAProxy admin socket) is reached by
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

use super::{
    collect, first_line, pump, Cmd, Held, Line, Output, Transport, TransportError, OUTPUT_LIMIT,
};
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
/// How long a master that just carried a command counts as alive without asking it (a check is a
/// round trip of its own on the control socket: not one per command).
const TRUST_FOR: Duration = Duration::from_secs(1);

/// How to reach one host.
#[derive(Clone, Debug)]
pub struct SshTarget {
    pub host: String,
    pub address: String,
    pub user: String,
    pub port: u16,
}

/// How long a master connection that carries no command stays up (`ControlPersist`): a run that
/// ends closes its masters itself, and those of a run killed with SIGKILL exit after this long. A
/// master that went away between commands is replaced before the next one.
pub const CONTROL_PERSIST: std::num::NonZeroUsize = std::num::NonZeroUsize::new(30).unwrap();

/// kube-free's own OpenSSH client settings, given with `ssh -F` so that neither
/// `~/.ssh/config` nor `/etc/ssh/ssh_config` is read: no ProxyCommand, jump host, agent or X11
/// forwarding, local command or other option of the operator's can change how hosts are reached.
/// Host keys are checked strictly against `known_hosts` only (no global known_hosts file);
/// without one, against the user's `~/.ssh/known_hosts`.
pub fn client_config(known_hosts: Option<&Path>) -> String {
    let user_known_hosts = match known_hosts {
        Some(path) => format!("\"{}\"", path.display()),
        None => "~/.ssh/known_hosts".to_owned(),
    };
    format!(
        "# kube-free's ssh settings (ssh -F): no other configuration file is read.\n\
         Host *\n\
         \x20 BatchMode yes\n\
         \x20 StrictHostKeyChecking yes\n\
         \x20 UserKnownHostsFile {user_known_hosts}\n\
         \x20 GlobalKnownHostsFile /dev/null\n\
         \x20 UpdateHostKeys no\n\
         \x20 ForwardAgent no\n\
         \x20 ForwardX11 no\n\
         \x20 PermitLocalCommand no\n\
         \x20 ProxyCommand none\n\
         \x20 ProxyJump none\n"
    )
}

/// Settings shared by every connection of a run.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// known_hosts file used with `StrictHostKeyChecking=yes`; `None`: the user's own files.
    pub known_hosts: Option<PathBuf>,
    /// The file [`client_config`] wrote (`ssh -F`).
    pub config_file: PathBuf,
    pub identity_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Directory for control sockets and forwarded sockets (short path: Unix sockets are limited).
    pub runtime_dir: PathBuf,
}

impl SshOptions {
    /// Options for the connections of a run whose sockets and files live in `runtime_dir`: writes
    /// [`client_config`] there.
    pub fn new(
        runtime_dir: &Path,
        known_hosts: Option<PathBuf>,
        identity_file: Option<PathBuf>,
        connect_timeout: Duration,
    ) -> std::io::Result<SshOptions> {
        let config_file = runtime_dir.join("ssh_config");
        std::fs::write(&config_file, client_config(known_hosts.as_deref()))?;
        Ok(SshOptions {
            known_hosts,
            config_file,
            identity_file,
            connect_timeout,
            runtime_dir: runtime_dir.to_owned(),
        })
    }
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
        let mut child = self.spawn_on(session, cmd).await?;
        let (Some(stdout), Some(stderr)) = (child.stdout().take(), child.stderr().take()) else {
            unreachable!("stdout and stderr are piped");
        };
        let collected = collect(stdout, stderr, OUTPUT_LIMIT)
            .await
            .map_err(|source| TransportError::Io {
                host: self.target.host.clone(),
                what: format!("cannot read from `{line}`"),
                source,
            })?;
        // More than the limit: dropping the child closes its session.
        let (stdout, stderr) = collected.ok_or_else(|| TransportError::TooMuchOutput {
            host: self.target.host.clone(),
            cmd: line.clone(),
        })?;
        let status = child.wait().await.map_err(|e| self.unreachable(&e))?;
        // ssh reports a lost connection as exit 255.
        if status.code() == Some(255) && session.check().await.is_err() {
            return Err(TransportError::Unreachable {
                host: self.target.host.clone(),
                message: format!("connection lost during `{line}`"),
            });
        }
        Ok(Output {
            status: status.code(),
            stdout,
            stderr,
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
        .control_persist(openssh::ControlPersist::IdleFor(CONTROL_PERSIST))
        .config_file(&options.config_file)
        .control_directory(&options.runtime_dir);
    if let Some(kh) = &options.known_hosts {
        builder.user_known_hosts_file(kh);
    }
    if let Some(key) = &options.identity_file {
        builder.keyfile(key);
    }
    builder
        .connect_mux(&target.address)
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

    /// On the master of the moment; never sent again (it holds something on the host).
    async fn hold(&self, cmd: &Cmd, timeout: Duration) -> Result<(String, Held), TransportError> {
        tracing::debug!(host = %self.target.host, cmd = %cmd, "held command");
        let (_, session) = self.live().await?;
        let line = cmd.to_string();
        let mut command = session.arc_raw_command(&line);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().await.map_err(|e| self.unreachable(&e))?;
        let stdout = child.stdout().take().expect("stdout is piped");
        let first = first_line(stdout, timeout)
            .await
            .map_err(|source| TransportError::Io {
                host: self.target.host.clone(),
                what: format!("cannot read from `{line}`"),
                source,
            })?;
        Ok((first, Held(Box::new(child))))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What OpenSSH itself makes of the settings (`ssh -G` prints the options it would use).
    fn effective(options: &SshOptions) -> String {
        let out = std::process::Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(&options.config_file)
            .arg("web-1.example")
            .output()
            .expect("ssh runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn the_client_reads_kube_frees_settings_only() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        let options =
            SshOptions::new(dir.path(), Some(kh.clone()), None, Duration::from_secs(3)).unwrap();
        let g = effective(&options);
        for line in [
            "batchmode yes".to_owned(),
            "stricthostkeychecking true".to_owned(),
            format!("userknownhostsfile {}", kh.display()),
            "globalknownhostsfile /dev/null".to_owned(),
            "forwardagent no".to_owned(),
            "forwardx11 no".to_owned(),
            "permitlocalcommand no".to_owned(),
        ] {
            assert!(g.lines().any(|l| l == line), "{line:?} not in\n{g}");
        }
        assert!(
            !g.lines()
                .any(|l| l.starts_with("proxycommand ") || l.starts_with("proxyjump ")),
            "{g}"
        );
        // Without a repository's known_hosts: the user's own file, still no global one.
        let options = SshOptions::new(dir.path(), None, None, Duration::from_secs(3)).unwrap();
        let g = effective(&options);
        assert!(g.contains("globalknownhostsfile /dev/null"), "{g}");
        assert!(g.contains("/.ssh/known_hosts"), "{g}");
    }
}
