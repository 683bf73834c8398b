//! The SSH transport: one multiplexed OpenSSH master connection per host (the `openssh` crate),
//! reused for every command of a run, with strict host-key checking against a known_hosts file and
//! connect and command timeouts. A Unix socket on the host (the HAProxy admin socket) is reached by
//! forwarding it to a local socket through the same master.

use super::{Cmd, Output, Transport, TransportError};
use openssh::{KnownHosts, Session, SessionBuilder, Socket, Stdio};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

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

pub struct SshTransport {
    host: String,
    session: Session,
    runtime_dir: PathBuf,
    /// Remote socket path → local forwarded socket path.
    forwards: Mutex<HashMap<String, PathBuf>>,
}

impl SshTransport {
    /// Opens the master connection.
    pub async fn connect(
        target: &SshTarget,
        options: &SshOptions,
    ) -> Result<SshTransport, TransportError> {
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
        let session =
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
                })?;
        Ok(SshTransport {
            host: target.host.clone(),
            session,
            runtime_dir: options.runtime_dir.clone(),
            forwards: Mutex::new(HashMap::new()),
        })
    }

    /// Closes the master connection.
    pub async fn close(self) {
        let _ = self.session.close().await;
    }

    fn unreachable(&self, e: &openssh::Error) -> TransportError {
        TransportError::Unreachable {
            host: self.host.clone(),
            message: chain(e),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[async_trait::async_trait]
impl Transport for SshTransport {
    fn host(&self) -> &str {
        &self.host
    }

    async fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<Output, TransportError> {
        tracing::debug!(host = %self.host, changes = cmd.changes, cmd = %cmd, "command");
        let line = cmd.to_string();
        let work = async {
            let mut command = self.session.raw_command(&line);
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
                        host: self.host.clone(),
                        what: format!("cannot write to `{line}`"),
                        source,
                    })?;
                drop(stdin);
            }
            let out = child
                .wait_with_output()
                .await
                .map_err(|e| self.unreachable(&e))?;
            // ssh reports a lost connection as exit 255.
            if out.status.code() == Some(255) && self.session.check().await.is_err() {
                return Err(TransportError::Unreachable {
                    host: self.host.clone(),
                    message: format!("connection lost during `{line}`"),
                });
            }
            Ok(Output {
                status: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| TransportError::Timeout {
                host: self.host.clone(),
                cmd: line.clone(),
                timeout,
            })?
    }

    async fn connect_unix(&self, path: &str) -> Result<tokio::net::UnixStream, TransportError> {
        let mut forwards = self.forwards.lock().await;
        let local = match forwards.get(path) {
            Some(local) => local.clone(),
            None => {
                let local =
                    self.runtime_dir
                        .join(format!("fwd-{}-{}.sock", self.host, forwards.len()));
                let _ = std::fs::remove_file(&local);
                self.session
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
                forwards.insert(path.to_owned(), local.clone());
                local
            }
        };
        tokio::net::UnixStream::connect(&local)
            .await
            .map_err(|source| TransportError::Io {
                host: self.host.clone(),
                what: format!(
                    "cannot connect to {path} (forwarded to {})",
                    local.display()
                ),
                source,
            })
    }
}
