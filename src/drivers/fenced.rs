//! Fencing inside the change: a [`Transport`] that wraps every command that changes its host in
//! [`fenced_cmd`], so that the host itself checks, under the lease's lock and in the same command,
//! that this run still holds the lease there before the change runs. The runtimes and balancers
//! reach their hosts through it (a balancer's configuration installs and reloads; its runtime
//! changes go through its admin socket, which this does not fence); the ledgers do not (the lease
//! commands themselves, and records written by compare-and-swap). The token is set when the run
//! takes the lease on the host and cleared when it gives it back; without one, commands pass as
//! they are (a world that never takes a lease, such as `logs`).

use super::lease::{fenced_cmd, hold_cmd, FENCED};
use super::{Cmd, Held, Line, Output, Transport, TransportError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The lease a host's changes are fenced by: its lock file, and this run's id and epoch there.
pub struct Fence {
    lock_file: String,
    token: Mutex<Option<(String, u64)>>,
}

impl Fence {
    pub fn new(lock_file: String) -> Arc<Fence> {
        Arc::new(Fence {
            lock_file,
            token: Mutex::new(None),
        })
    }

    /// From now on, changes need `run_id` to hold the lease at `epoch`.
    pub fn set(&self, run_id: &str, epoch: u64) {
        *self.token.lock().expect("not poisoned") = Some((run_id.to_owned(), epoch));
    }

    pub fn clear(&self) {
        *self.token.lock().expect("not poisoned") = None;
    }

    fn token(&self) -> Option<(String, u64)> {
        self.token.lock().expect("not poisoned").clone()
    }
}

pub struct FencedTransport {
    inner: Arc<dyn Transport>,
    fence: Arc<Fence>,
}

impl FencedTransport {
    pub fn new(inner: Arc<dyn Transport>, fence: Arc<Fence>) -> FencedTransport {
        FencedTransport { inner, fence }
    }
}

#[async_trait::async_trait]
impl Transport for FencedTransport {
    fn host(&self) -> &str {
        self.inner.host()
    }

    async fn run(&self, cmd: &Cmd, timeout: Duration) -> Result<Output, TransportError> {
        let Some((run_id, epoch)) = self.fence.token().filter(|_| cmd.changes) else {
            return self.inner.run(cmd, timeout).await;
        };
        let fenced = fenced_cmd(&self.fence.lock_file, &run_id, epoch, cmd);
        let out = self.inner.run(&fenced, timeout).await?;
        if out.status == Some(FENCED) && out.stderr_text().starts_with("fenced:") {
            return Err(TransportError::Fenced {
                host: self.host().to_owned(),
                message: out.stderr_text().trim().to_owned(),
            });
        }
        Ok(out)
    }

    async fn stream(
        &self,
        cmd: &Cmd,
        to: mpsc::Sender<Line>,
    ) -> Result<Option<i32>, TransportError> {
        self.inner.stream(cmd, to).await
    }

    async fn connect_unix(&self, path: &str) -> Result<tokio::net::UnixStream, TransportError> {
        self.inner.connect_unix(path).await
    }

    /// Holds the lease's lock on the host, checked, while the change is sent through the socket.
    async fn connect_unix_for_change(
        &self,
        path: &str,
    ) -> Result<(tokio::net::UnixStream, Option<Held>), TransportError> {
        let Some((run_id, epoch)) = self.fence.token() else {
            return Ok((self.inner.connect_unix(path).await?, None));
        };
        let cmd = hold_cmd(&self.fence.lock_file, &run_id, epoch);
        // The lock is waited for up to 10 s on the host.
        let (line, held) = self.inner.hold(&cmd, Duration::from_secs(15)).await?;
        if line != "held" {
            return Err(TransportError::Fenced {
                host: self.host().to_owned(),
                message: if line.is_empty() {
                    "fenced: the lease's lock on this host could not be taken".to_owned()
                } else {
                    line
                },
            });
        }
        Ok((self.inner.connect_unix(path).await?, Some(held)))
    }

    async fn hold(&self, cmd: &Cmd, timeout: Duration) -> Result<(String, Held), TransportError> {
        self.inner.hold(cmd, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::lease::{acquire_cmd, lock_file, parse_answer, release_cmd, Answer};
    use crate::drivers::local::LocalTransport;

    /// A change passes while the run holds the lease, and is refused on the host once another run
    /// holds it; so does a change through a socket, sent while the lease's lock is held; a
    /// read is never fenced.
    #[tokio::test]
    async fn changes_run_only_under_this_runs_lease() {
        let dir = tempfile::tempdir().unwrap();
        let lock = lock_file(dir.path().to_str().unwrap());
        let local: Arc<dyn Transport> = Arc::new(LocalTransport::new("here"));
        let take = |run: &str, ttl: u64| acquire_cmd(&lock, run, ttl, "me", 1);
        let epoch = match parse_answer(
            &local
                .run(&take("run-a", 30), Duration::from_secs(5))
                .await
                .unwrap()
                .stdout_text(),
        ) {
            Some(Answer::Held { epoch, .. }) => epoch,
            other => panic!("{other:?}"),
        };
        let fence = Fence::new(lock.clone());
        let t = FencedTransport::new(local.clone(), fence.clone());
        let marker = dir.path().join("changed");
        let touch = Cmd::change(["touch".to_owned(), marker.display().to_string()]);
        let socket = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let socket = socket.display().to_string();
        // Whether the lease's lock is free on the host now.
        let lock_free = || {
            std::process::Command::new("flock")
                .args(["-n", &format!("{lock}.mutex"), "true"])
                .status()
                .unwrap()
                .success()
        };
        // No token yet: as it is.
        t.run(&touch, Duration::from_secs(5)).await.unwrap();
        std::fs::remove_file(&marker).unwrap();
        fence.set("run-a", epoch);
        let out = t.run(&touch, Duration::from_secs(5)).await.unwrap();
        assert_eq!(out.status, Some(0), "{out:?}");
        assert!(marker.exists());
        std::fs::remove_file(&marker).unwrap();
        // A change through a socket is sent while the lock is held, checked; then it is let go.
        let (_stream, held) = t.connect_unix_for_change(&socket).await.unwrap();
        listener.accept().await.unwrap();
        assert!(held.is_some());
        assert!(!lock_free(), "the lock is held while the change is sent");
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !lock_free() {
            assert!(std::time::Instant::now() < deadline, "the lock was kept");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // run-a's lease ends (given back here, so that no timing is involved) and run-b takes it.
        local
            .run(&release_cmd(&lock, "run-a"), Duration::from_secs(5))
            .await
            .unwrap();
        let taken = local
            .run(&take("run-b", 30), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(taken.stdout_text().starts_with("held"), "{taken:?}");
        let err = t.run(&touch, Duration::from_secs(5)).await.unwrap_err();
        assert!(
            matches!(&err, TransportError::Fenced { message, .. } if message.contains("run-b")),
            "{err:?}"
        );
        assert!(!marker.exists(), "the change ran after all");
        let err = t.connect_unix_for_change(&socket).await.unwrap_err();
        assert!(
            matches!(&err, TransportError::Fenced { message, .. } if message.contains("run-b")),
            "{err:?}"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(200), listener.accept())
                .await
                .is_err(),
            "a fenced change reached the socket"
        );
        // A read runs whoever holds the lease.
        let read = Cmd::read(["true"]);
        assert_eq!(
            t.run(&read, Duration::from_secs(5)).await.unwrap().status,
            Some(0)
        );
    }
}
