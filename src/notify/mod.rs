//! Notifications: sends events (a rollout started, succeeded, failed, a sync keeps failing, ...) to
//! the HTTP(S) targets of `notifications:`, and never delays or fails the caller. Owns the flood rules
//! (`gate`: once per event and commit; a persisting condition again at 5 m, 30 m and 2 h, then one
//! `recovered`), the bodies and the signature (`body`), and one sender task per target with a bounded
//! queue, a 5 s timeout per POST and bounded retries. It is told what happened by the reconciler and
//! the watch loop and decides nothing about rollouts; it reads no repository and touches no host.

mod body;
mod gate;

pub use crate::desired::EventKind;

use crate::desired::{Notification, NotifyFormat};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Events waiting per target; one more is dropped (with a warning).
pub const QUEUE: usize = 64;
/// Longest one POST may take, connecting included.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Something that happened to an app in an environment.
///
/// `send` sends it once per (kind, env, app, commit); for `step` and `paused` the message is part of
/// that key too, so write the step in it ("step 2 of 3: weight 50%") and nothing that changes from
/// one pass to the next. `env` and `app` may be empty for what concerns no app (the repository
/// cannot be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub env: String,
    pub app: String,
    pub commit: String,
    pub version: Option<String>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification {target:?}: cannot read {what} {path}")]
    Read {
        target: String,
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("notification {target:?}")]
    Secret {
        target: String,
        #[source]
        source: crate::secret::SecretError,
    },
    #[error("notification {target:?}: header {name:?}: the value in {path} is not a valid HTTP header value (one line of visible characters)")]
    HeaderValue {
        target: String,
        name: String,
        path: String,
    },
    #[error("notification {target:?}: no PEM certificate in ca_file {path}")]
    Ca {
        target: String,
        path: String,
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error("notification {target:?}: cannot set up the HTTP client")]
    Client {
        target: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("notifications need a tokio runtime; the sender was set up outside one")]
    NoRuntime,
}

/// Sends events to the notification targets. Cheap to clone (all clones share the queues and the
/// flood rules); the sender tasks end once every clone is dropped and their queues are empty.
#[derive(Clone)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    targets: Vec<Target>,
    gate: Mutex<gate::Gate>,
    progress: Arc<Progress>,
}

/// One target as the caller side sees it: what it wants and its queue.
struct Target {
    name: String,
    events: Vec<EventKind>,
    queue: mpsc::Sender<Arc<Job>>,
}

struct Job {
    event: Event,
    /// When it was queued (the body's `time`).
    time: SystemTime,
}

/// Jobs queued or being sent, over all targets; `idle` wakes `flush` when it reaches zero.
#[derive(Default)]
struct Progress {
    pending: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Progress {
    fn done(&self) {
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .inner
            .iter()
            .flat_map(|i| i.targets.iter().map(|t| t.name.as_str()))
            .collect();
        f.debug_struct("Notifier").field("targets", &names).finish()
    }
}

impl Notifier {
    /// Reads header and secret files now (refuses a secret/header file readable by group or others,
    /// with a typed error naming the file) and the CA files; spawns one sender task per target on
    /// the current tokio runtime. No targets: the same as [`Notifier::disabled`].
    pub fn new(targets: &[Notification]) -> Result<Notifier, NotifyError> {
        if targets.is_empty() {
            return Ok(Notifier::disabled());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NotifyError::NoRuntime)?;
        crate::install_tls_provider();
        let senders = targets
            .iter()
            .map(Sender::new)
            .collect::<Result<Vec<_>, _>>()?;
        let progress = Arc::new(Progress::default());
        let mut handles = Vec::new();
        for (sender, target) in senders.into_iter().zip(targets) {
            let (queue, rx) = mpsc::channel(QUEUE);
            runtime.spawn(sender.run(rx, progress.clone()));
            handles.push(Target {
                name: target.name.clone(),
                events: target.events.clone(),
                queue,
            });
        }
        Ok(Notifier {
            inner: Some(Arc::new(Inner {
                targets: handles,
                gate: Mutex::new(gate::Gate::default()),
                progress,
            })),
        })
    }

    /// A notifier with no targets: every call does nothing.
    pub fn disabled() -> Notifier {
        Notifier { inner: None }
    }

    /// Never blocks, never fails: queues the event for every target that wants it, the first time
    /// for its (kind, env, app, commit) key (see [`Event`]); a repeat is dropped.
    pub fn send(&self, event: Event) {
        let Some(inner) = self.live(event.kind) else {
            return;
        };
        if !inner.gate().once(&event, Instant::now()) {
            tracing::debug!(kind = %event.kind, env = %event.env, app = %event.app, "notification already sent; not again");
            return;
        }
        inner.enqueue(event, |_| true);
    }

    /// A condition that persists (a failing sync, a failed rollout), keyed by (kind, env, app): sent
    /// the first time, then again only 5 m, 30 m and 2 h after the first, never more often. Call it
    /// on every pass that still sees the condition; the latest event is the one sent.
    pub fn failing(&self, event: Event) {
        let Some(inner) = self.live(event.kind) else {
            return;
        };
        if inner.gate().failing(&event, Instant::now()) {
            inner.enqueue(event, |_| true);
        }
    }

    /// Ends a condition reported with [`Notifier::failing`]: sends `recovered` once if anything was
    /// sent for that key, to the targets that want both `recovered` and that kind.
    pub fn clear(&self, kind: EventKind, env: &str, app: &str) {
        let Some(inner) = self.live(kind) else {
            return;
        };
        if let Some(recovered) = inner.gate().clear(kind, env, app, Instant::now()) {
            inner.enqueue(recovered, |t| t.events.contains(&kind));
        }
    }

    /// Waits up to `timeout` for queued sends to finish (for `reconcile --once` before exit).
    pub async fn flush(&self, timeout: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        let progress = &inner.progress;
        let drained = tokio::time::timeout(timeout, async {
            loop {
                let idle = progress.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if progress.pending.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                unsent = progress.pending.load(Ordering::SeqCst),
                "notifications still unsent after {}; giving up on them",
                crate::desired::duration::format(timeout)
            );
        }
    }

    /// The shared state, when some target wants events of `kind`.
    fn live(&self, kind: EventKind) -> Option<&Inner> {
        self.inner
            .as_deref()
            .filter(|i| i.targets.iter().any(|t| t.events.contains(&kind)))
    }
}

impl Inner {
    fn gate(&self) -> std::sync::MutexGuard<'_, gate::Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the event for every target that wants its kind and passes `also`.
    fn enqueue(&self, event: Event, also: impl Fn(&Target) -> bool) {
        let job = Arc::new(Job {
            event,
            time: SystemTime::now(),
        });
        for target in &self.targets {
            if !target.events.contains(&job.event.kind) || !also(target) {
                continue;
            }
            self.progress.pending.fetch_add(1, Ordering::SeqCst);
            match target.queue.try_send(job.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.progress.done();
                    tracing::warn!(
                        target = %target.name,
                        kind = %job.event.kind,
                        env = %job.event.env,
                        app = %job.event.app,
                        "notification queue of {:?} is full ({QUEUE} events); dropping this one",
                        target.name
                    );
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.progress.done(),
            }
        }
    }
}

/// One target as its sender task sees it.
struct Sender {
    name: String,
    url: String,
    /// Host of the URL, for logs (the URL itself may hold a token, e.g. Slack's).
    host: String,
    format: NotifyFormat,
    header: Option<(HeaderName, HeaderValue)>,
    secret: Option<Vec<u8>>,
    client: reqwest::Client,
}

impl Sender {
    fn new(t: &Notification) -> Result<Sender, NotifyError> {
        let header = match &t.header {
            Some(h) => {
                let value = read_secret(&t.name, "header value_file", &h.value_file)?;
                let mut value =
                    HeaderValue::from_bytes(&value).map_err(|_| NotifyError::HeaderValue {
                        target: t.name.clone(),
                        name: h.name.clone(),
                        path: h.value_file.clone(),
                    })?;
                value.set_sensitive(true);
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    NotifyError::HeaderValue {
                        target: t.name.clone(),
                        name: h.name.clone(),
                        path: h.value_file.clone(),
                    }
                })?;
                Some((name, value))
            }
            None => None,
        };
        let secret = match &t.secret_file {
            Some(path) => Some(read_secret(&t.name, "secret_file", path)?),
            None => None,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .connect_timeout(POST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kube-free/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &t.ca_file {
            let pem = std::fs::read(path).map_err(|source| NotifyError::Read {
                target: t.name.clone(),
                what: "ca_file",
                path: path.clone(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| NotifyError::Ca {
                    target: t.name.clone(),
                    path: path.clone(),
                    source: Some(e),
                })?;
            if certs.is_empty() {
                return Err(NotifyError::Ca {
                    target: t.name.clone(),
                    path: path.clone(),
                    source: None,
                });
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|source| NotifyError::Client {
            target: t.name.clone(),
            source,
        })?;
        Ok(Sender {
            name: t.name.clone(),
            host: url::Url::parse(&t.url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default(),
            url: t.url.clone(),
            format: t.format,
            header,
            secret,
            client,
        })
    }

    async fn run(self, mut queue: mpsc::Receiver<Arc<Job>>, progress: Arc<Progress>) {
        while let Some(job) = queue.recv().await {
            self.deliver(&job).await;
            progress.done();
        }
    }

    /// Posts one event, retrying failures that another try may fix; logs what it could not send.
    async fn deliver(&self, job: &Job) {
        let e = &job.event;
        let body = match self.format {
            NotifyFormat::Json => body::json(e, job.time),
            NotifyFormat::Slack => body::slack(e),
        };
        let mut last = String::new();
        for attempt in 0..body::ATTEMPTS {
            tokio::time::sleep(body::backoff(attempt)).await;
            let mut request = self
                .client
                .post(&self.url)
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(secret) = &self.secret {
                let now = body::unix_secs(SystemTime::now());
                request = request
                    .header("X-Kube-Free-Timestamp", now.to_string())
                    .header("X-Kube-Free-Signature", body::sign(secret, now, &body));
            }
            if let Some((name, value)) = &self.header {
                request = request.header(name.clone(), value.clone());
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::debug!(target = %self.name, kind = %e.kind, env = %e.env, app = %e.app, "notification sent");
                    return;
                }
                Ok(r) if !body::retryable(r.status().as_u16()) => {
                    last = format!("{} answered {}", self.host, r.status());
                    break;
                }
                Ok(r) => last = format!("{} answered {}", self.host, r.status()),
                Err(err) => {
                    last = format!("{}: {}", self.host, crate::error::chain(&err.without_url()))
                }
            }
        }
        tracing::warn!(
            target = %self.name,
            kind = %e.kind,
            env = %e.env,
            app = %e.app,
            "notification to {:?} not sent: {last}",
            self.name
        );
    }
}

/// Reads a secret file that only its owner may read; trailing whitespace (the final newline) is
/// not part of the secret.
fn read_secret(target: &str, what: &'static str, path: &str) -> Result<Vec<u8>, NotifyError> {
    crate::secret::read(std::path::Path::new(path), what).map_err(|source| NotifyError::Secret {
        target: target.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn target(dir: &std::path::Path) -> Notification {
        Notification {
            name: "ops".into(),
            url: "http://127.0.0.1:9/hook".into(),
            format: NotifyFormat::Json,
            events: EventKind::ALL.to_vec(),
            header: None,
            secret_file: Some(dir.join("secret").to_str().unwrap().to_owned()),
            ca_file: None,
        }
    }

    fn write(path: &std::path::Path, content: &str, mode: u32) {
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[tokio::test]
    async fn secret_files_must_be_private_present_and_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let secret = dir.path().join("secret");
        let err = Notifier::new(std::slice::from_ref(&t)).unwrap_err();
        assert!(matches!(err, NotifyError::Secret { .. }), "{err:?}");
        assert_eq!(
            crate::error::chain(&err),
            format!(
                "notification \"ops\": cannot read secret_file {}: No such file or directory (os error 2)",
                secret.display()
            )
        );
        write(&secret, "s3cret\n", 0o640);
        let err = Notifier::new(std::slice::from_ref(&t)).unwrap_err();
        assert_eq!(
            crate::error::chain(&err),
            format!("notification \"ops\": permissions 0640 for secret_file {} are too open: it must be accessible only by its owner (chmod 600)", secret.display())
        );
        write(&secret, "\n", 0o600);
        let err = Notifier::new(std::slice::from_ref(&t)).unwrap_err();
        assert!(
            matches!(
                err,
                NotifyError::Secret {
                    source: crate::secret::SecretError::Empty { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        write(&secret, "s3cret\n", 0o600);
        assert_eq!(
            read_secret("ops", "secret_file", secret.to_str().unwrap()).unwrap(),
            b"s3cret"
        );
        Notifier::new(std::slice::from_ref(&t)).unwrap();
    }

    #[tokio::test]
    async fn header_values_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = target(dir.path());
        t.secret_file = None;
        let file = dir.path().join("token");
        t.header = Some(crate::desired::NotifyHeader {
            name: "Authorization".into(),
            value_file: file.to_str().unwrap().to_owned(),
        });
        write(&file, "Bearer a\nb\n", 0o400);
        let err = Notifier::new(std::slice::from_ref(&t)).unwrap_err();
        assert!(matches!(err, NotifyError::HeaderValue { .. }), "{err:?}");
        write(&file, "Bearer abc\n", 0o600);
        Notifier::new(&[t]).unwrap();
    }

    #[tokio::test]
    async fn a_ca_file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = target(dir.path());
        t.secret_file = None;
        t.url = "https://127.0.0.1:9/hook".into();
        let ca = dir.path().join("ca.pem");
        write(&ca, "not a certificate\n", 0o644);
        t.ca_file = Some(ca.to_str().unwrap().to_owned());
        let err = Notifier::new(&[t]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "notification \"ops\": no PEM certificate in ca_file {}",
                ca.display()
            )
        );
    }

    #[test]
    fn setting_up_outside_a_runtime_is_an_error_and_disabled_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = target(dir.path());
        t.secret_file = None;
        assert!(matches!(Notifier::new(&[t]), Err(NotifyError::NoRuntime)));
        let n = Notifier::disabled();
        n.send(Event {
            kind: EventKind::Started,
            env: "production".into(),
            app: "api".into(),
            commit: "c1".into(),
            version: None,
            message: String::new(),
        });
        n.clear(EventKind::SyncFailing, "production", "api");
        assert!(Notifier::new(&[]).unwrap().inner.is_none());
    }
}
