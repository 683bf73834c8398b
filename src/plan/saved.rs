//! Saved plans (`plan --out`, `reconcile --plan`): the file a reviewed plan is kept in — its format
//! version, the full commit, the scope, the steps as [`Plan::render_json`] gives them — and the
//! digest of what it was made from ([`Observed::of`]: a projection of the observed state limited to
//! what the planner decides on, never the counters and sessions that change with every request).
//! [`SavedPlan::confirm`] says whether a run may execute it: the same digest, the same steps. Pure
//! but for [`SavedPlan::read`] and [`SavedPlan::write`], the file's own read and atomic write; the
//! check under the lease is the pass's (`reconcile::pass::once_saved`).

use super::{Plan, Scope};
use crate::desired::DesiredState;
use crate::names::backend_name;
use crate::observed::{BalancerState, HostState, ObservedState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The version of the file's format this kube-free writes and reads.
pub const FORMAT: u64 = 1;

/// What `plan --out` writes and `reconcile --plan` executes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPlan {
    /// [`FORMAT`].
    pub format: u64,
    /// The full commit id of the desired state the plan was made at.
    pub commit: String,
    /// `--env` and `--app` of the plan (`null`: every one).
    pub scope: SavedScope,
    /// What the plan was made from.
    pub observed: Observed,
    /// The plan, as [`Plan::render_json`] gives it (`in_sync`, `steps`, `notes`, `stuck`).
    pub plan: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedScope {
    pub env: Option<String>,
    pub app: Option<String>,
    /// `--prune` or `--prune-all`, when the plan was made with one.
    #[serde(default, skip_serializing_if = "is_off")]
    pub prune: super::Prune,
}

fn is_off(prune: &super::Prune) -> bool {
    *prune == super::Prune::Off
}

/// The digest of what the planner decides on in an observed state, whole and by part, so that a
/// change can be named ([`Observed::changes`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observed {
    /// `sha256:<hex>` of `parts` (their names and digests, as canonical JSON).
    pub digest: String,
    /// Each part's `sha256:<hex>`, by what it is: `instance ENV/APP/SLOT on HOST`, `config of
    /// balancer B`, `server BACKEND/SERVER on balancer B`, `rollout record of ENV/APP`, …
    pub parts: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("cannot read the plan file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the plan file {} is not a saved plan of kube-free", .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the plan file {} has format {found}; this kube-free reads format {FORMAT} only: make the plan with the kube-free that applies it", .path.display())]
    Format { path: PathBuf, found: String },
    #[error("the plan file {} is damaged: {what}", .path.display())]
    Damaged { path: PathBuf, what: String },
    #[error("{} is a directory: --out needs the name of a file", .path.display())]
    Directory { path: PathBuf },
    #[error("cannot write the plan file {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the plan was made at commit {plan}; the repository is at {now}: make a new plan")]
    Commit { plan: String, now: String },
    #[error("the plan was made for {}; --{option} {given} was given (a saved plan keeps its own scope: leave --env and --app out)", .plan)]
    Scope {
        option: &'static str,
        /// The plan's scope, in words.
        plan: String,
        given: String,
    },
    #[error("the observed state changed since the plan was made: {}; nothing was changed: make a new plan", .changes.join(", "))]
    Changed { changes: Vec<String> },
    #[error("the plan made now differs from the saved one: {diff}; nothing was changed: make a new plan")]
    Steps { diff: String },
}

impl SavedPlanError {
    /// Refused as given (exit 2): everything but a failed write.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, SavedPlanError::Write { .. })
    }
}

/// `sha256:<hex>` of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn canonical(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value serializes")
}

impl Observed {
    /// The digest of what the planner decides on in `observed`, part by part: per host, each
    /// instance (key, version, spec, port, pid and start ticks or container, alive) and each unreadable
    /// or recovered record; per balancer, its config's digest and each server's admin state, up
    /// and weight; each rollout record whole, as read. Not a server's sessions, counters or label,
    /// which change with every request, nor the one-sample verdicts that may flap with nothing
    /// changed (an instance's probe, the balancer's last check): where they matter, the plan made
    /// from them differs, and [`SavedPlan::confirm`] compares the steps too.
    pub fn of(observed: &ObservedState) -> Observed {
        let mut parts: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for (host, state) in &observed.hosts {
            for ((env, app, slot), i) in &state.instances {
                let r = &i.record;
                parts.insert(
                    format!("instance {env}/{app}/{slot} on {host}"),
                    serde_json::json!({
                        "version": r.version,
                        "spec": r.spec,
                        "port": r.port,
                        "pid": r.pid,
                        "start_ticks": r.start_ticks,
                        "container": r.container,
                        "alive": i.alive,
                    }),
                );
            }
            for path in state.unreadable.keys() {
                parts.insert(
                    format!("unreadable instance record {path} on {host}"),
                    true.into(),
                );
            }
            for (env, app, slot) in &state.recovered {
                parts.insert(
                    format!("recovered instance {env}/{app}/{slot} on {host}"),
                    true.into(),
                );
            }
        }
        for (name, b) in &observed.balancers {
            parts.insert(
                format!("config of balancer {name}"),
                b.config.as_deref().map(|c| sha256(c.as_bytes())).into(),
            );
            for ((backend, server), s) in &b.servers {
                parts.insert(
                    format!("server {backend}/{server} on balancer {name}"),
                    serde_json::json!({
                        "admin": s.admin,
                        "up": s.up,
                        "weight": s.weight,
                    }),
                );
            }
        }
        for ((env, app), record) in &observed.rollouts {
            parts.insert(
                format!("rollout record of {env}/{app}"),
                serde_json::to_value(record).expect("a rollout record serializes"),
            );
        }
        let parts: BTreeMap<String, String> = parts
            .into_iter()
            .map(|(name, value)| (name, sha256(&canonical(&value))))
            .collect();
        Observed {
            digest: Observed::total(&parts),
            parts,
        }
    }

    /// The digest of every part.
    fn total(parts: &BTreeMap<String, String>) -> String {
        sha256(&canonical(&serde_json::json!(parts)))
    }

    /// What changed from `self` to `now`, in words: `X changed`, `X appeared`, `X is gone`.
    pub fn changes(&self, now: &Observed) -> Vec<String> {
        let mut changes = Vec::new();
        for (name, digest) in &self.parts {
            match now.parts.get(name) {
                Some(d) if d == digest => {}
                Some(_) => changes.push(format!("{name} changed")),
                None => changes.push(format!("{name} is gone")),
            }
        }
        for name in now.parts.keys() {
            if !self.parts.contains_key(name) {
                changes.push(format!("{name} appeared"));
            }
        }
        changes
    }
}

impl SavedPlan {
    /// The saved form of `plan`, made at `commit` for `scope` from `observed` (of which what the
    /// apps in scope are made from counts: [`within`]).
    pub fn new(
        commit: &str,
        scope: &Scope,
        desired: &DesiredState,
        observed: &ObservedState,
        plan: &Plan,
    ) -> SavedPlan {
        SavedPlan {
            format: FORMAT,
            commit: commit.to_owned(),
            scope: SavedScope {
                env: scope.env.clone(),
                app: scope.app.clone(),
                prune: scope.prune,
            },
            observed: Observed::of(&within(desired, observed, scope)),
            plan: plan.render_json(),
        }
    }

    /// The number of steps saved.
    pub fn steps(&self) -> usize {
        self.plan["steps"].as_array().map_or(0, Vec::len)
    }

    /// The scope a run of the plan has: the plan's; `env` and `app` (`--env`, `--app`) may only
    /// repeat it.
    pub fn scope(&self, env: Option<&str>, app: Option<&str>) -> Result<Scope, SavedPlanError> {
        let words = || match (&self.scope.env, &self.scope.app) {
            (None, None) => "every environment and app".to_owned(),
            (Some(e), None) => format!("--env {e}"),
            (None, Some(a)) => format!("--app {a}"),
            (Some(e), Some(a)) => format!("--env {e} --app {a}"),
        };
        for (option, given, saved) in [("env", env, &self.scope.env), ("app", app, &self.scope.app)]
        {
            if let Some(given) = given {
                if saved.as_deref() != Some(given) {
                    return Err(SavedPlanError::Scope {
                        option,
                        plan: words(),
                        given: given.to_owned(),
                    });
                }
            }
        }
        Ok(Scope {
            env: self.scope.env.clone(),
            app: self.scope.app.clone(),
            prune: self.scope.prune,
            except: Vec::new(),
        })
    }

    /// The repository must be at the plan's commit.
    pub fn check_commit(&self, now: &str) -> Result<(), SavedPlanError> {
        if self.commit == now {
            Ok(())
        } else {
            Err(SavedPlanError::Commit {
                plan: self.commit.clone(),
                now: now.to_owned(),
            })
        }
    }

    /// Whether a run that observed `observed` and planned `plan` from it may execute this plan:
    /// what the planner decides on is what it was when the plan was made (else
    /// [`SavedPlanError::Changed`], naming each change), and the plan is the saved one, step for
    /// step (else [`SavedPlanError::Steps`], naming the first difference).
    pub fn confirm(
        &self,
        desired: &DesiredState,
        observed: &ObservedState,
        plan: &Plan,
    ) -> Result<(), SavedPlanError> {
        let scope = Scope {
            env: self.scope.env.clone(),
            app: self.scope.app.clone(),
            prune: self.scope.prune,
            except: Vec::new(),
        };
        let now = Observed::of(&within(desired, observed, &scope));
        if now.digest != self.observed.digest {
            let mut changes = self.observed.changes(&now);
            if changes.is_empty() {
                changes.push("its digest differs".into());
            }
            return Err(SavedPlanError::Changed { changes });
        }
        let now = plan.render_json();
        if now == self.plan {
            return Ok(());
        }
        let steps = |p: &serde_json::Value| p["steps"].as_array().cloned().unwrap_or_default();
        let (saved, made) = (steps(&self.plan), steps(&now));
        let text = |s: Option<&serde_json::Value>| {
            s.map_or("nothing".to_owned(), |s| {
                format!("`{}`", s["description"].as_str().unwrap_or_default())
            })
        };
        let diff = match (0..saved.len().max(made.len())).find(|&i| saved.get(i) != made.get(i)) {
            Some(i) => format!(
                "step {} is {} in the saved plan, {} now ({} steps saved, {} now)",
                i + 1,
                text(saved.get(i)),
                text(made.get(i)),
                saved.len(),
                made.len()
            ),
            None => "its notes differ".to_owned(),
        };
        Err(SavedPlanError::Steps { diff })
    }

    /// Reads a plan file `path` holds as `bytes`, checking its format version and its digest.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<SavedPlan, SavedPlanError> {
        let json = |source| SavedPlanError::Json {
            path: path.to_owned(),
            source,
        };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json)?;
        match &value["format"] {
            serde_json::Value::Number(n) if n.as_u64() == Some(FORMAT) => {}
            serde_json::Value::Null => return Err(json(serde::de::Error::missing_field("format"))),
            other => {
                return Err(SavedPlanError::Format {
                    path: path.to_owned(),
                    found: other.to_string(),
                })
            }
        }
        let saved: SavedPlan = serde_json::from_value(value).map_err(json)?;
        let damaged = |what: &str| SavedPlanError::Damaged {
            path: path.to_owned(),
            what: what.to_owned(),
        };
        if saved.commit.len() != 40 || !saved.commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(damaged("its commit is not a full commit id"));
        }
        if Observed::total(&saved.observed.parts) != saved.observed.digest {
            return Err(damaged(
                "the digest of what was observed does not match its parts",
            ));
        }
        if !saved.plan["steps"].is_array() {
            return Err(damaged("it has no list of steps"));
        }
        Ok(saved)
    }

    /// The file's bytes: pretty JSON and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a saved plan serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Reads and checks the plan file at `path`.
    pub fn read(path: &Path) -> Result<SavedPlan, SavedPlanError> {
        let bytes = std::fs::read(path).map_err(|source| SavedPlanError::Read {
            path: path.to_owned(),
            source,
        })?;
        SavedPlan::parse(path, &bytes)
    }

    /// Refuses a directory as where a plan is written (before anything is observed).
    pub fn check_target(path: &Path) -> Result<(), SavedPlanError> {
        if path.is_dir() {
            return Err(SavedPlanError::Directory {
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    /// Writes the plan to `path`, readable by its owner only, whole or not at all: a temporary
    /// file beside it, synced, then renamed over it.
    pub fn write(&self, path: &Path) -> Result<(), SavedPlanError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        SavedPlan::check_target(path)?;
        let error = |source| SavedPlanError::Write {
            path: path.to_owned(),
            source,
        };
        let name = path
            .file_name()
            .ok_or_else(|| error(std::io::ErrorKind::InvalidInput.into()))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.tmp", std::process::id()));
        let temp = path.with_file_name(temp_name);
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&self.to_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written.map_err(error)
    }
}

/// What of `observed` a plan over `scope` is made from: the instances (orphans included), servers
/// and rollout records of the apps in scope (of every app, the records that cannot be read, by where they are), and the
/// configs of their balancers. What another environment or app does meanwhile (a canary of
/// staging on the same balancer, say) does not refuse the plan.
fn within(desired: &DesiredState, observed: &ObservedState, scope: &Scope) -> ObservedState {
    let apps: BTreeSet<(String, String)> = desired
        .deployments()
        .filter(|(env, app, _)| scope.includes(&env.name, app))
        .map(|(env, app, _)| (env.name.clone(), app.to_owned()))
        .collect();
    let backends: BTreeSet<String> = apps.iter().map(|(e, a)| backend_name(e, a)).collect();
    let balancers: BTreeSet<&str> = apps
        .iter()
        .map(|(env, _)| desired.environments[env].balancer.as_str())
        .collect();
    // Orphans too (an instance of an app or environment the desired state no longer has).
    let app_of = |env: &String, app: &String| scope.includes(env, app);
    let mut o = ObservedState::default();
    for (host, state) in &observed.hosts {
        let h = HostState {
            instances: state
                .instances
                .iter()
                .filter(|((env, app, _), _)| app_of(env, app))
                .map(|(k, i)| (k.clone(), i.clone()))
                .collect(),
            unreadable: state.unreadable.clone(),
            recovered: state
                .recovered
                .iter()
                .filter(|(env, app, _)| app_of(env, app))
                .cloned()
                .collect(),
        };
        o.hosts.insert(host.clone(), h);
    }
    for (name, b) in &observed.balancers {
        if balancers.contains(name.as_str()) {
            let servers = b
                .servers
                .iter()
                .filter(|((backend, _), _)| backends.contains(backend))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            o.balancers.insert(
                name.clone(),
                BalancerState {
                    config: b.config.clone(),
                    servers,
                },
            );
        }
    }
    o.rollouts = observed
        .rollouts
        .iter()
        .filter(|((env, app), _)| app_of(env, app))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::{
        Admin, BalancerState, Check, HostState, Instance, Server, ServerCounters,
    };
    use crate::state::{InstanceRecord, Phase, RolloutRecord};

    /// One host serving 1.0 from blue behind balancer `edge`, with a rollout record.
    fn observed() -> ObservedState {
        let mut o = ObservedState::default();
        let record = InstanceRecord {
            env: "prod".into(),
            app: "api".into(),
            slot: "blue".into(),
            version: "1.0".into(),
            revision: "r".into(),
            port: 8000,
            pid: 42,
            start_ticks: 7,
            started_at: 0,
            argv: vec!["api".into()],
            container: None,
            spec: None,
        };
        o.hosts.insert(
            "web-1".into(),
            HostState {
                instances: [(
                    ("prod".into(), "api".into(), "blue".into()),
                    Instance {
                        record,
                        alive: true,
                        ready: Some(true),
                    },
                )]
                .into(),
                ..HostState::default()
            },
        );
        let server = Server {
            admin: Admin::Ready,
            up: true,
            check: Check::Passed,
            weight: 100,
            sessions: 3,
            counters: ServerCounters::default(),
            label: "UP".into(),
        };
        o.balancers.insert(
            "edge".into(),
            BalancerState {
                config: Some("backend kf_prod_api\n".into()),
                servers: [(("kf_prod_api".into(), "web-1_blue".into()), server)].into(),
            },
        );
        o.rollouts.insert(
            ("prod".into(), "api".into()),
            RolloutRecord {
                env: "prod".into(),
                app: "api".into(),
                version: "1.0".into(),
                revision: "r".into(),
                fingerprint: "f".into(),
                strategy: "blue-green".into(),
                phase: Phase::Succeeded,
                step: 0,
                step_started_at: 0,
                step_base: Default::default(),
                started_at: 0,
                updated_at: 1,
                promote: Default::default(),
                analysis: vec![],
                outcome: None,
                last_good: None,
                bake: None,
                stored: Default::default(),
            },
        );
        o
    }

    fn server(o: &mut ObservedState) -> &mut Server {
        o.balancers
            .get_mut("edge")
            .unwrap()
            .servers
            .get_mut(&("kf_prod_api".into(), "web-1_blue".into()))
            .unwrap()
    }

    fn instance(o: &mut ObservedState) -> &mut Instance {
        o.hosts
            .get_mut("web-1")
            .unwrap()
            .instances
            .get_mut(&("prod".into(), "api".into(), "blue".into()))
            .unwrap()
    }

    #[test]
    fn the_digest_is_the_same_for_the_same_state_and_keeps_counters_sessions_labels_and_flapping_verdicts_out(
    ) {
        let before = Observed::of(&observed());
        assert_eq!(before, Observed::of(&observed()));
        assert!(before.digest.starts_with("sha256:"), "{before:?}");
        let mut o = observed();
        let s = server(&mut o);
        s.sessions = 900;
        s.counters.responses[1] += 1000;
        s.counters.connection_errors += 1;
        s.label = "UP 3/3".into();
        let i = instance(&mut o);
        i.record.started_at = 99;
        i.record.argv.push("--verbose".into());
        i.ready = Some(false);
        server(&mut o).check = Check::Failed;
        assert_eq!(Observed::of(&o), before);
    }

    #[test]
    fn what_the_planner_decides_on_changes_the_digest_and_is_named() {
        let before = Observed::of(&observed());
        type Change = fn(&mut ObservedState);
        let cases: [(Change, &str); 10] = [
            (
                |o| server(o).weight = 50,
                "server kf_prod_api/web-1_blue on balancer edge changed",
            ),
            (
                |o| server(o).admin = Admin::Drain,
                "server kf_prod_api/web-1_blue on balancer edge changed",
            ),
            (
                |o| server(o).up = false,
                "server kf_prod_api/web-1_blue on balancer edge changed",
            ),
            (
                |o| instance(o).alive = false,
                "instance prod/api/blue on web-1 changed",
            ),
            (
                |o| instance(o).record.version = "2.0".into(),
                "instance prod/api/blue on web-1 changed",
            ),
            (
                |o| instance(o).record.pid = 43,
                "instance prod/api/blue on web-1 changed",
            ),
            (
                |o| o.rollouts.values_mut().next().unwrap().updated_at = 2,
                "rollout record of prod/api changed",
            ),
            (
                |o| o.balancers.get_mut("edge").unwrap().config = Some("edited".into()),
                "config of balancer edge changed",
            ),
            (
                |o| {
                    o.hosts.get_mut("web-1").unwrap().instances.clear();
                },
                "instance prod/api/blue on web-1 is gone",
            ),
            (
                |o| {
                    o.hosts
                        .get_mut("web-1")
                        .unwrap()
                        .unreadable
                        .insert("/s/prod/api/green.json".into(), "torn".into());
                },
                "unreadable instance record /s/prod/api/green.json on web-1 appeared",
            ),
        ];
        for (change, said) in cases {
            let mut o = observed();
            change(&mut o);
            let now = Observed::of(&o);
            assert_ne!(now.digest, before.digest, "{said}");
            assert_eq!(before.changes(&now), vec![said.to_owned()]);
        }
    }

    fn saved() -> SavedPlan {
        SavedPlan::new(
            &"ab".repeat(20),
            &Scope {
                env: Some("prod".into()),
                ..Scope::default()
            },
            &desired(),
            &observed(),
            &Plan::default(),
        )
    }

    /// `prod` deploys `api` on web-1 and web-2 behind `edge`.
    fn desired() -> DesiredState {
        crate::testing::two_hosts("blue-green")
    }

    #[test]
    fn a_saved_plan_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        let saved = saved();
        saved.write(&path).unwrap();
        assert_eq!(SavedPlan::read(&path).unwrap(), saved);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Written again over itself; no temporary file left.
        saved.write(&path).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let json: serde_json::Value = serde_json::from_slice(&saved.to_bytes()).unwrap();
        assert_eq!(json["format"], 1);
        assert_eq!(
            json["scope"],
            serde_json::json!({"env": "prod", "app": null})
        );
        assert_eq!(json["plan"]["in_sync"], true);
    }

    #[test]
    fn a_directory_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let e = saved().write(dir.path()).unwrap_err();
        assert!(matches!(e, SavedPlanError::Directory { .. }), "{e}");
        assert!(e.is_bad_input());
    }

    #[test]
    fn a_file_that_is_not_a_plan_of_this_format_is_refused_with_its_name() {
        let path = Path::new("p.json");
        let good: serde_json::Value = serde_json::from_slice(&saved().to_bytes()).unwrap();
        let with = |key: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[key] = value;
            serde_json::to_vec(&v).unwrap()
        };
        let refused = |bytes: &[u8]| {
            let e = SavedPlan::parse(path, bytes).unwrap_err();
            assert!(e.is_bad_input());
            let text = crate::error::chain(&e);
            assert!(text.contains("p.json"), "{text}");
            text
        };
        assert!(refused(b"{ not json").contains("is not a saved plan"));
        assert!(refused(b"").contains("is not a saved plan"));
        assert!(refused(&with("format", 2.into()))
            .contains("has format 2; this kube-free reads format 1"));
        assert!(refused(&with("format", "1".into())).contains("has format \"1\""));
        let mut no_format = good.clone();
        no_format.as_object_mut().unwrap().remove("format");
        assert!(
            refused(&serde_json::to_vec(&no_format).unwrap()).contains("missing field `format`")
        );
        assert!(refused(&with("commit", "abc".into())).contains("not a full commit id"));
        assert!(refused(&with("extra", 1.into())).contains("unknown field"));
        let mut edited = good.clone();
        edited["observed"]["parts"]["config of balancer edge"] = "sha256:00".into();
        assert!(refused(&serde_json::to_vec(&edited).unwrap()).contains("does not match its parts"));
        assert!(SavedPlan::parse(path, &serde_json::to_vec(&good).unwrap()).is_ok());
    }

    #[test]
    fn the_scope_is_the_plans_and_options_may_only_repeat_it() {
        let saved = saved();
        let scope = saved.scope(None, None).unwrap();
        assert_eq!(
            (scope.env.as_deref(), scope.app.as_deref()),
            (Some("prod"), None)
        );
        assert!(saved.scope(Some("prod"), None).is_ok());
        let e = saved.scope(Some("staging"), None).unwrap_err().to_string();
        assert_eq!(e, "the plan was made for --env prod; --env staging was given (a saved plan keeps its own scope: leave --env and --app out)");
        assert!(saved.scope(None, Some("api")).is_err());
    }

    #[test]
    fn a_run_confirms_the_plan_only_on_the_same_state_and_steps() {
        let saved = saved();
        assert!(saved.check_commit(&"ab".repeat(20)).is_ok());
        let e = saved
            .check_commit(&"cd".repeat(20))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "the plan was made at commit {}; the repository is at {}: make a new plan",
                "ab".repeat(20),
                "cd".repeat(20)
            )),
            "{e}"
        );

        let d = desired();
        let mut o = observed();
        assert!(saved.confirm(&d, &o, &Plan::default()).is_ok());
        server(&mut o).sessions += 1;
        assert!(saved.confirm(&d, &o, &Plan::default()).is_ok());
        // What is outside the plan's scope may change: a server of another app on the balancer,
        // an instance and a record of another environment.
        let mut outside = server(&mut o).clone();
        outside.weight = 7;
        o.balancers
            .get_mut("edge")
            .unwrap()
            .servers
            .insert(("kf_staging_web".into(), "web-1_blue".into()), outside);
        let mut staging = instance(&mut o).clone();
        staging.record.env = "staging".into();
        o.hosts
            .get_mut("web-1")
            .unwrap()
            .instances
            .insert(("staging".into(), "api".into(), "blue".into()), staging);
        let mut record = o.rollouts.values().next().unwrap().clone();
        record.env = "staging".into();
        o.rollouts.insert(("staging".into(), "api".into()), record);
        assert!(saved.confirm(&d, &o, &Plan::default()).is_ok());
        server(&mut o).weight = 10;
        let e = saved
            .confirm(&d, &o, &Plan::default())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "the observed state changed since the plan was made: server kf_prod_api/web-1_blue on balancer edge changed; nothing was changed: make a new plan");

        let mut other = Plan::default();
        other.add(
            super::super::Action::ApplyConfig {
                balancer: "edge".into(),
            },
            &[],
        );
        let e = saved
            .confirm(&d, &observed(), &other)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "the plan made now differs from the saved one: step 1 is nothing in the saved plan, `apply config and reload balancer edge` now (0 steps saved, 1 now); nothing was changed: make a new plan");
    }
}
