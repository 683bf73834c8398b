//! The `local` transport: runs commands on this machine, exactly as the SSH transport would run them on
//! a host, without SSH; a streamed command runs in a process group of its own.

use super::{
    collect, first_line, pump, Cmd, Held, Line, Output, Transport, TransportError, OUTPUT_LIMIT,
};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

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

impl LocalTransport {
    fn io(&self, what: String) -> impl FnOnce(std::io::Error) -> TransportError {
        let host = self.host.clone();
        move |source| TransportError::Io { host, what, source }
    }

    /// Starts `cmd` with its stdout and stderr piped and its stdin written (then closed); killed
    /// when dropped. With `own_group`, in a process group of its own, so that a Ctrl-C at the
    /// terminal reaches only kube-free, which decides what ends.
    async fn start(
        &self,
        cmd: &Cmd,
        own_group: bool,
    ) -> Result<tokio::process::Child, TransportError> {
        let mut command = self.command(cmd)?;
        command
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if own_group {
            command.process_group(0);
        }
        let mut child = command
            .spawn()
            .map_err(self.io(format!("cannot start `{cmd}`")))?;
        if let (Some(bytes), Some(mut stdin)) = (&cmd.stdin, child.stdin.take()) {
            stdin
                .write_all(bytes)
                .await
                .map_err(self.io(format!("cannot write to `{cmd}`")))?;
        }
        Ok(child)
    }

    /// [`LocalTransport::start`] with stdin piped and left open.
    fn start_held(&self, cmd: &Cmd) -> Result<tokio::process::Child, TransportError> {
        self.command(cmd)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(self.io(format!("cannot start `{cmd}`")))
    }

    /// `cmd`'s program and arguments, killed when dropped.
    fn command(&self, cmd: &Cmd) -> Result<tokio::process::Command, TransportError> {
        let (program, args) = cmd
            .argv
            .split_first()
            .ok_or_else(|| TransportError::Failed {
                host: self.host.clone(),
                cmd: String::new(),
                status: None,
                stderr: "empty command".into(),
            })?;
        let mut command = tokio::process::Command::new(program);
        command.args(args).kill_on_drop(true);
        Ok(command)
    }
}

#[async_trait::async_trait]
impl Transport for LocalTransport {
    fn host(&self) -> &str {
        &self.host
    }

    async fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<Output, TransportError> {
        tracing::debug!(host = %self.host, changes = cmd.changes, cmd = %cmd, "command");
        let mut child = self.start(cmd, false).await?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("stdout and stderr are piped");
        };
        let work = async {
            let collected = collect(stdout, stderr, OUTPUT_LIMIT).await;
            let collected = collected.map_err(self.io(format!("cannot read from `{cmd}`")))?;
            // More than the limit: the child is killed when dropped.
            let (stdout, stderr) = collected.ok_or_else(|| TransportError::TooMuchOutput {
                host: self.host.clone(),
                cmd: cmd.to_string(),
            })?;
            let status = child
                .wait()
                .await
                .map_err(self.io(format!("cannot wait for `{cmd}`")))?;
            Ok(Output {
                status: status.code(),
                stdout,
                stderr,
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(out) => out,
            Err(_) => Err(TransportError::Timeout {
                host: self.host.clone(),
                cmd: cmd.to_string(),
                timeout,
            }),
        }
    }

    async fn stream(
        &self,
        cmd: &Cmd,
        to: mpsc::Sender<Line>,
    ) -> Result<Option<i32>, TransportError> {
        tracing::debug!(host = %self.host, changes = cmd.changes, cmd = %cmd, "streamed command");
        let mut child = self.start(cmd, true).await?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("stdout and stderr are piped");
        };
        if !pump(stdout, stderr, &to).await {
            let _ = child.kill().await;
            return Ok(None);
        }
        let status = child
            .wait()
            .await
            .map_err(self.io(format!("cannot wait for `{cmd}`")))?;
        Ok(status.code())
    }

    async fn hold(&self, cmd: &Cmd, timeout: Duration) -> Result<(String, Held), TransportError> {
        tracing::debug!(host = %self.host, cmd = %cmd, "held command");
        let mut child = self.start_held(cmd)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let line = first_line(stdout, timeout)
            .await
            .map_err(self.io(format!("cannot read from `{cmd}`")))?;
        Ok((line, Held(Box::new(child))))
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
    use crate::drivers::{run_ok, Stream};

    #[tokio::test]
    async fn output_is_kept_up_to_the_limit() {
        assert_eq!(
            crate::drivers::collect(&b"12345"[..], &b"ab"[..], 5)
                .await
                .unwrap(),
            Some((b"12345".to_vec(), b"ab".to_vec()))
        );
        assert_eq!(
            crate::drivers::collect(&b"123456"[..], &b""[..], 5)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            crate::drivers::collect(&b""[..], &b"123456"[..], 5)
                .await
                .unwrap(),
            None
        );
        // A command that prints more fails, and is not waited for to the end.
        let t = LocalTransport::new("here");
        let cmd = Cmd::read([
            "sh".to_owned(),
            "-c".to_owned(),
            format!("head -c {} /dev/zero; sleep 30", OUTPUT_LIMIT + 1),
        ]);
        let started = std::time::Instant::now();
        let err = t.run(&cmd, Duration::from_secs(20)).await.unwrap_err();
        assert!(
            matches!(err, TransportError::TooMuchOutput { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().ends_with("printed more than 32 MiB"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

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

    async fn collect(mut lines: mpsc::Receiver<Line>) -> Vec<(Stream, String)> {
        let mut all = Vec::new();
        while let Some(l) = lines.recv().await {
            all.push((l.stream, String::from_utf8(l.text).unwrap()));
        }
        all
    }

    #[tokio::test]
    async fn streams_stdout_and_stderr_line_by_line_with_the_exit_status() {
        let t = LocalTransport::new("here");
        let (to, lines) = mpsc::channel(4);
        let script = "echo one; sleep 0.1; echo oops >&2; sleep 0.1; printf 'two\nlast'; exit 3";
        let cmd = Cmd::read(["sh", "-c", script]);
        let (status, got) = tokio::join!(t.stream(&cmd, to), collect(lines));
        assert_eq!(status.unwrap(), Some(3));
        assert_eq!(
            got,
            [
                (Stream::Stdout, "one".to_owned()),
                (Stream::Stderr, "oops".to_owned()),
                (Stream::Stdout, "two".to_owned()),
                (Stream::Stdout, "last".to_owned()),
            ]
        );
        let (to, lines) = mpsc::channel(4);
        let cmd = Cmd::read(["cat"]).with_stdin("in\n");
        let (status, got) = tokio::join!(t.stream(&cmd, to), collect(lines));
        assert_eq!(
            (status.unwrap(), got),
            (Some(0), vec![(Stream::Stdout, "in".to_owned())])
        );
        let (to, _) = mpsc::channel(4);
        let err = t
            .stream(&Cmd::read(["/nonexistent/x"]), to)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("cannot start `/nonexistent/x`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_stream_nobody_reads_any_more_is_ended() {
        let t = LocalTransport::new("here");
        let (to, mut lines) = mpsc::channel(4);
        let follow = tokio::spawn(async move {
            t.stream(&Cmd::read(["sh", "-c", "echo first; exec sleep 30"]), to)
                .await
        });
        assert_eq!(lines.recv().await.unwrap().text, b"first");
        drop(lines);
        let ended = tokio::time::timeout(Duration::from_secs(5), follow)
            .await
            .expect("ended at once")
            .unwrap();
        assert_eq!(ended.unwrap(), None);
    }
}
