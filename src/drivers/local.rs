//! The `local` transport: runs commands on this machine, exactly as the SSH transport would run them on
//! a host, without SSH.

use super::{Cmd, Output, Transport, TransportError};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub struct LocalTransport {
    host: String,
}

impl LocalTransport {
    pub fn new(host: &str) -> Self {
        LocalTransport {
            host: host.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl Transport for LocalTransport {
    fn host(&self) -> &str {
        &self.host
    }

    async fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<Output, TransportError> {
        tracing::debug!(host = %self.host, changes = cmd.changes, cmd = %cmd, "command");
        let io = |what: String| {
            let host = self.host.clone();
            move |source| TransportError::Io { host, what, source }
        };
        let (program, args) = cmd
            .argv
            .split_first()
            .ok_or_else(|| TransportError::Failed {
                host: self.host.clone(),
                cmd: String::new(),
                status: None,
                stderr: "empty command".into(),
            })?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("cannot start `{cmd}`")))?;
        if let (Some(bytes), Some(mut stdin)) = (&cmd.stdin, child.stdin.take()) {
            stdin
                .write_all(bytes)
                .await
                .map_err(io(format!("cannot write to `{cmd}`")))?;
        }
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(out) => {
                let out = out.map_err(io(format!("cannot wait for `{cmd}`")))?;
                Ok(Output {
                    status: out.status.code(),
                    stdout: out.stdout,
                    stderr: out.stderr,
                })
            }
            Err(_) => Err(TransportError::Timeout {
                host: self.host.clone(),
                cmd: cmd.to_string(),
                timeout,
            }),
        }
    }

    async fn connect_unix(&self, path: &str) -> Result<tokio::net::UnixStream, TransportError> {
        tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| TransportError::Io {
                host: self.host.clone(),
                what: format!("cannot connect to {path}"),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::run_ok;

    #[tokio::test]
    async fn runs_argv_without_a_shell_with_stdin_and_timeouts() {
        let t = LocalTransport::new("here");
        let out = t
            .run(&Cmd::read(["echo", "$HOME; x"]), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out.stdout_text(), "$HOME; x\n");
        let out = t
            .run(
                &Cmd::read(["cat"]).with_stdin("piped"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout_text(), "piped");
        let err = run_ok(&t, &Cmd::read(["false"]), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`false` failed (exit 1)"), "{err}");
        let err = t
            .run(&Cmd::read(["sleep", "5"]), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    }
}
