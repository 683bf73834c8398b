//! Steps on instances: pull a version's image, start a version in a slot (done when it runs there
//! already; never over a live instance of another version), probe it until it is ready, stop it.
//! What an instance runs ([`launch`], [`image`]) is rendered here from the app's runtime.

use super::{Live, Trouble};
use crate::desired::spec::placeholders;
use crate::desired::{ContainerNetwork, DesiredState, EnvValue, PullPolicy, Runtime};
use crate::drivers::runtime::{Container, Launch, StartSpec, Started};
use crate::drivers::RuntimeError;
use crate::execute::StepError;
use crate::names::SlotRef;

/// What an instance of `version` in slot `at` runs: the environment kube-free gives it (its port and
/// `KUBE_FREE_{ENV,APP,SLOT,VERSION}`, then the app's own) and its command, from the app's runtime
/// with its placeholders filled in.
pub(in crate::reconcile) fn launch(
    desired: &DesiredState,
    at: &SlotRef,
    version: &str,
    port: u16,
) -> Result<Launch, RuntimeError> {
    let value = placeholders(at, version, port);
    let app = &desired.apps[&at.app];
    let (command, env, container) = match &app.runtime {
        Runtime::Process { command, env } => (command.as_slice(), env, None),
        Runtime::Docker {
            image,
            command,
            env,
            network,
            bind,
            ..
        } => (
            command.as_deref().unwrap_or_default(),
            env,
            Some(Container {
                image: image.render(value),
                host_network: *network == ContainerNetwork::Host,
                bind: *bind,
            }),
        ),
    };
    let mut assignments = vec![
        format!("PORT={port}"),
        format!("KUBE_FREE_ENV={}", at.env),
        format!("KUBE_FREE_APP={}", at.app),
        format!("KUBE_FREE_SLOT={}", at.slot),
        format!("KUBE_FREE_VERSION={version}"),
    ];
    for (name, v) in env {
        let v = match v {
            EnvValue::Text(t) => t.render(value),
            EnvValue::File {
                value: Some(secret),
                ..
            } => secret.0.clone(),
            EnvValue::File { file, .. } => {
                return Err(RuntimeError::SecretUnread {
                    app: at.app.clone(),
                    name: name.clone(),
                    file: file.clone(),
                })
            }
        };
        assignments.push(format!("{name}={v}"));
    }
    let launch = Launch {
        env: assignments,
        command: command.iter().map(|w| w.render(value)).collect(),
        container,
    };
    launch.env_lines(&at.app)?;
    Ok(launch)
}

/// The image `version` of the app runs on `host`, when it runs one.
pub(in crate::reconcile) fn image(
    desired: &DesiredState,
    host: &str,
    env: &str,
    app: &str,
    version: &str,
) -> Option<String> {
    // No slot or port: validation refuses {slot} and {port} in an image (one serves both slots).
    let at = SlotRef::new(env, app, host, "");
    desired.apps[app]
        .runtime
        .image()
        .map(|t| t.render(placeholders(&at, version, 0)))
}

impl Live {
    pub(super) async fn start(&self, at: &SlotRef, version: &str) -> Result<(), StepError> {
        let runtime = self.world.runtime(at)?;
        let wanted = self.world.desired.spec(at, version);
        let port = self.port(at);
        let spec = StartSpec {
            at: at.clone(),
            version: version.to_owned(),
            revision: self.world.revision.clone(),
            port,
            launch: launch(&self.world.desired, at, version, port)?,
            spec: wanted.clone(),
            stop_timeout: self.app(at).stop_timeout,
        };
        // Done already (a resumed run)? Never start over a live instance of another version, or
        // of this version with another spec.
        let record = match runtime.start_unless_running(&spec).await? {
            Started::New(record) => record,
            Started::Running(record) if record.is(version, &wanted) => record,
            Started::Running(record) => {
                return Err(Trouble::SlotTaken {
                    slot: at.slot.clone(),
                    host: at.host.clone(),
                    version: if record.version == version {
                        format!("{version} with another spec")
                    } else {
                        record.version
                    },
                    pid: record.pid,
                }
                .into())
            }
        };
        self.started
            .lock()
            .expect("not poisoned")
            .insert(at.clone(), record);
        Ok(())
    }

    /// Makes the image of `version` available on `host` (docker runtime; nothing to do otherwise).
    pub(super) async fn pull(
        &self,
        host: &str,
        env: &str,
        app: &str,
        version: &str,
    ) -> Result<(), StepError> {
        let Some(image) = image(&self.world.desired, host, env, app, version) else {
            return Ok(());
        };
        let always = matches!(
            self.world.desired.apps[app].runtime,
            Runtime::Docker {
                pull: PullPolicy::Always,
                ..
            }
        );
        let at = SlotRef::new(env, app, host, "");
        self.world.runtime(&at)?.pull(&image, always).await?;
        Ok(())
    }

    /// Probes the instance until it passes `healthy_after` times in a row, within the probe's
    /// deadline; an instance that exits meanwhile fails at once, with the end of its log.
    pub(super) async fn probe(&self, at: &SlotRef) -> Result<(), StepError> {
        let probe = &self.app(at).probe;
        let runtime = self.world.runtime(at)?;
        // The record this run's start wrote, or the slot's (a resumed run).
        let started = self.started.lock().expect("not poisoned").get(at).cloned();
        let record = match started {
            Some(record) => record,
            None => runtime
                .instance(at)
                .await?
                .ok_or_else(|| Trouble::NoRecord {
                    slot: at.slot.clone(),
                    host: at.host.clone(),
                })?,
        };
        let exited = || async {
            let (log, tail) = runtime
                .logs(at, 20)
                .await
                .unwrap_or_else(|e| ("its log".to_owned(), crate::error::chain(&e)));
            StepError::from(Trouble::Exited { log, tail })
        };
        let mut passes = 0;
        let mut last = None;
        let deadline = tokio::time::Instant::now() + probe.deadline;
        loop {
            // The host is asked only when a probe fails (has the instance exited?) and after the
            // last pass: a probe that passes costs no round trip.
            match self.world.probe_once(&at.host, &at.app, record.port).await {
                Ok(()) => {
                    passes += 1;
                    if passes >= probe.healthy_after {
                        // The answers were the instance's own only if nothing else listens there
                        // (and, when something does, it may be because the instance is gone).
                        if let Some(pids) = runtime.strangers_on_port(&record).await? {
                            if !runtime.is_alive(&record).await? {
                                return Err(exited().await);
                            }
                            return Err(Trouble::PortShared {
                                host: at.host.clone(),
                                port: record.port,
                                pids,
                            }
                            .into());
                        }
                        return Ok(());
                    }
                }
                Err(e) => {
                    passes = 0;
                    last = Some(e);
                    if !runtime.is_alive(&record).await? {
                        return Err(exited().await);
                    }
                }
            }
            if tokio::time::Instant::now() + probe.interval > deadline {
                return Err(Trouble::NotReady {
                    deadline: probe.deadline,
                    last,
                }
                .into());
            }
            tokio::time::sleep(probe.interval).await;
        }
    }

    /// Stops the slot's instance as the plan's snapshot saw it (its graceful stop bounded by the
    /// app's `stop_timeout`).
    pub(super) async fn stop(&self, at: &SlotRef) -> Result<(), StepError> {
        self.started.lock().expect("not poisoned").remove(at);
        let Some(instance) = self.observed.instance(&at.host, &at.env, &at.app, &at.slot) else {
            return Ok(());
        };
        // The runtime that started it: not the app's when its runtime changed in Git since.
        self.world
            .runtime_of(at, &instance.record)?
            .stop(&instance.record, self.stop_timeout(at))
            .await?;
        Ok(())
    }
}
